"""Readers for the standard face-recognition dataset formats: insightface RecordIO training sets
and ``.bin`` verification sets, LFW ``pairs.txt`` and the CelebA annotation files. Each reader
checks what it reads and reports bad input as a DataError naming the file."""

from components.data.formats.celeba import read_celeba_attributes, read_celeba_identities
from components.data.formats.lfw_pairs import read_lfw_pairs
from components.data.formats.recordio import RecordIOReader, read_property, write_recordio
from components.data.formats.verification_bin import load_verification_bin

__all__ = ["RecordIOReader", "load_verification_bin", "read_celeba_attributes", "read_celeba_identities",
           "read_lfw_pairs", "read_property", "write_recordio"]
