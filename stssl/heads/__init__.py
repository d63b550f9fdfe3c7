"""stssl.heads."""
