from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
about = {}
exec((ROOT / "recsys" / "version.py").read_text(), about)

setup(
    name="movielens-recs",
    version=about["__version__"],
    description=(
        "Nightly Spark batch job: MovieLens histories, a TFRS two-tower retrieval model, "
        "ScaNN top-N for every user, published as a Parquet table."
    ),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["recsys", "recsys.*"]),
    include_package_data=True,
    package_data={"recsys": ["py.typed"]},
    install_requires=[
        "pyspark>=4.0,<5",
        # scann 1.4.2 ships TF ops built against TF 2.20: TF 2.21 breaks `import scann`.
        "tensorflow~=2.20.0",
        "tf-keras~=2.20.0",
        "tensorflow-recommenders==0.7.7",
        "scann==1.4.2",
        "numpy>=2,<3",
        # PySpark 4 does not fully support pandas 3.
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "matplotlib>=3.8",
        "psutil>=5.9",
        # tomllib is in the standard library from Python 3.11
        "tomli>=2; python_version < '3.11'",
    ],
    extras_require={
        "test": ["pytest>=8"],
    },
)
