"""genft: what fine-tuning does to a language model's generalization (Yang et al., NAACL 2024), as a suite."""

__version__ = "0.1.0"
