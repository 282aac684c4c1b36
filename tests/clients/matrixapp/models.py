"""Models of the Django client matrix: the seeded table (not managed by Django; `email` is
masked by pgwarden) and a table of Django's own, created by `migrate --run-syncdb`."""

import os

from django.db import models

TABLE = os.environ["TABLE"]


class Customer(models.Model):
    id = models.IntegerField(primary_key=True)
    name = models.TextField(null=True)
    email = models.TextField(null=True)

    class Meta:
        app_label = "matrixapp"
        db_table = TABLE
        managed = False


class Note(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.DO_NOTHING, db_constraint=False)
    body = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)
    score = models.DecimalField(max_digits=8, decimal_places=2)

    class Meta:
        app_label = "matrixapp"
        db_table = f"{TABLE}_notes"
