"""Storage: the object store (local directory; S3 through boto3) and DVC versioning of datasets."""

from databright.storage.objectstore import LocalObjectStore, ObjectStore, check_key

__all__ = ["LocalObjectStore", "ObjectStore", "check_key"]
