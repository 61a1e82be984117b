"""Storage: the object store (local directory; S3 through boto3) and DVC versioning of datasets.

* ``objectstore`` — the ``ObjectStore`` protocol, ``LocalObjectStore`` (the embedded default) and
  ``S3ObjectStore`` (any S3-compatible endpoint); ``Settings.object_store()`` picks one;
* ``dvc_versions`` — version folders tracked in a DVC workspace and pushed to its remote (a folder
  or a ``DvcRemote`` on S3); imported on its own, because DVC is heavy.
"""

from databright.storage.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore, check_key

__all__ = ["LocalObjectStore", "ObjectStore", "S3ObjectStore", "check_key"]
