"""salerank: nightly recommendations of time-limited sales.

The stage folders of the repository are installed as sub-packages of this one
(see ``setup.py``).
"""
__version__ = "0.1.0"
