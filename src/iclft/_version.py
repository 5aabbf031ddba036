"""The package version (one home: the package root and every manifest read it here)."""

__version__ = "0.1.0"
