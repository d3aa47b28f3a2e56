"""Data folders (the contract of ``ranking.datafolder``) built from real sources, and the
``python -m compression data`` commands that build and check them."""
