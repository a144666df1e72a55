"""slt_jax: sign language translation (poses -> text) in JAX/Flax NNX."""
from setuptools import find_packages, setup

# Ranges admit the known-good set verified in the project's STACK notes
# (jax 0.10.2 / 0.11 on GPU hosts, flax 0.12.8, transformers 5.24 / 5.17 on GPU hosts, ...).
INSTALL_REQUIRES = [
    "absl-py>=2.1",
    "jax>=0.7,<0.13",
    "flax>=0.12,<0.14",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.14",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12",
    "numpy>=1.26",
    "tensorflow>=2.18,<2.23",
    "tensorflow-datasets>=4.9.7",
    "pose-format>=0.10,<0.16",
    "sacrebleu>=2.4,<3",
    "rouge-score>=0.1.2",
    "tokenizers>=0.21",
    "transformers>=5.0,<6",
    "safetensors>=0.4",
    "sentencepiece>=0.2",
    "tensorboard>=2.18",
    # --mode=show, TensorBoard pose images, translate --render: pose-format's visualizer draws with OpenCV;
    # matplotlib draws the data plots (and ships the DejaVu font used for captions).
    "opencv-python-headless>=4.8",
    "matplotlib>=3.8",
    "pillow>=9",  # captions and GIFs (imported directly; matplotlib needs it too)
    # LoRA / QLoRA (qwix quantisation): the default of the recommended 7B-14B configs, so not an extra.
    "qwix>=0.1.8",
]

EXTRAS = {
    # torch is only a numerical oracle in tests. Pinned to the CPU wheel release: a bare `torch`
    # requirement makes pip resolve a multi-GB CUDA build.
    "test": ["pytest>=8", "torch==2.13.0", "peft>=0.15",
             # tests/test_video.py: scikit-image's astronaut photograph, written as a clip with OpenCV.
             "scikit-image>=0.22", "opencv-python-headless>=4.8"],  # + datasets, wandb (below)
    # Kept so that `pip install -e '.[lora]'` still works: qwix is a core dependency now.
    "lora": [],
    # TFDS builders of public sign language corpora (PHOENIX-2014T, DGS Corpus, ...). tensorflow-datasets
    # 4.9's download_and_prepare imports `importlib_resources`, which it declares for Python < 3.9 only.
    "datasets": ["sign-language-datasets>=0.4", "importlib_resources>=5"],
    "wandb": ["wandb"],
}
EXTRAS["test"] += EXTRAS["datasets"] + EXTRAS["wandb"]

setup(
    name="slt_jax",
    version="0.1.0",
    description="Sign language translation (pose sequences -> text) with JAX/Flax NNX and HF checkpoints",
    packages=find_packages(include=["slt_jax", "slt_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
