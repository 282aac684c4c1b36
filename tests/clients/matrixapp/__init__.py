"""The Django app of the client matrix (tests/clients/django_matrix.py)."""
