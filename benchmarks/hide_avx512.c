// LD_PRELOAD library: this process and its children see a CPU without
// AVX-512 (benchmarks/as_avx2.py builds and loads it).
//
// Matmul libraries (XLA's YNNPACK, oneDNN, torch's cpuinfo) pick kernels by
// CPUID, past any ISA cap a framework offers; so the kernel is asked to fault
// on CPUID (arch_prctl ARCH_SET_CPUID, "cpuid_fault" in /proc/cpuinfo), and
// the SIGSEGV handler below answers each CPUID with the AVX-512 bits cleared.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
// The process's own SIGSEGV handler (Python's faulthandler, ...): it keeps
// receiving every real fault, while the CPUID handler stays installed.
static struct sigaction chained;

static long allow_cpuid(int on) {
  return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV) return real_sigaction(sig, act, old);
  if (old) *old = chained;
  if (act) chained = *act;
  return 0;
}

// signal() reaches the kernel through glibc's internal sigaction, not the
// symbol above (gcc's crash handler installs itself this way).
sighandler_t signal(int sig, sighandler_t handler) {
  struct sigaction act, old;
  memset(&act, 0, sizeof act);
  act.sa_handler = handler;
  act.sa_flags = SA_RESTART;
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

sighandler_t bsd_signal(int sig, sighandler_t handler) {
  return signal(sig, handler);
}

static void pass_on(int sig, siginfo_t *info, void *ctx) {
  if (chained.sa_flags & SA_SIGINFO) {
    chained.sa_sigaction(sig, info, ctx);
  } else if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN) {
    chained.sa_handler(sig);
  } else {  // default action: returning re-runs the faulting instruction
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, 0);
  }
}

static void on_segv(int sig, siginfo_t *info, void *ctx_) {
  ucontext_t *ctx = ctx_;
  greg_t *r = ctx->uc_mcontext.gregs;
  const uint8_t *ip = (const uint8_t *)r[REG_RIP];
  if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
    pass_on(sig, info, ctx_);
    return;
  }
  uint32_t leaf = r[REG_RAX], sub = r[REG_RCX];
  uint32_t a = leaf, b, c = sub, d;
  allow_cpuid(1);
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
  allow_cpuid(0);
  if (leaf == 7 && sub == 0) {
    // EBX: AVX512 F DQ IFMA PF ER CD BW VL; ECX: VBMI VBMI2 VNNI BITALG
    // VPOPCNTDQ; EDX: 4VNNIW 4FMAPS VP2INTERSECT FP16.
    b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) |
           (1u << 28) | (1u << 30) | (1u << 31));
    c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
  } else if (leaf == 7 && sub == 1) {
    a &= ~((1u << 4) | (1u << 5));  // AVX-VNNI, AVX512_BF16
  }
  r[REG_RAX] = a;
  r[REG_RBX] = b;
  r[REG_RCX] = c;
  r[REG_RDX] = d;
  r[REG_RIP] += 2;  // CPUID is 0f a2
}

__attribute__((constructor)) static void hide_avx512(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  chained.sa_handler = SIG_DFL;
  real_sigaction(SIGSEGV, &sa, 0);
  if (allow_cpuid(0) != 0) {
    static const char msg[] =
        "hide_avx512: this kernel/CPU cannot fault on CPUID (no cpuid_fault)\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(3);
  }
}
