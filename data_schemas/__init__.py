"""The contracts between stages: one module per on-disk artifact.

Each schema lists typed required and optional columns.  ``validate`` checks a
frame on write and on read and raises ``DataError`` naming the file, the row
and the column that broke the contract.
"""
from data_schemas.base import Column, Schema  # noqa: F401
