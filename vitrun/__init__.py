"""vitrun: reproduce "An Image is Worth 16x16 Words" (arXiv 2010.11929) from TOML recipes."""

__version__ = "0.1.0"
