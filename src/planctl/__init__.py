"""planctl: administer LLM API subscription plans, credit and keys."""

__version__ = "0.1.0"
