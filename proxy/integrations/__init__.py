"""Adapters that let libraries of the Python ecosystem use replproxy.

Each module imports the library it adapts, so only code that uses it pays for the import: `import
proxy` never loads them. sqlalchemy.py is the SQLAlchemy dialect (docs/sqlalchemy.md).
"""
