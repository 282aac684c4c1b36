"""Django ORM (on psycopg 3) through pgwarden: driven by tests/client_matrix.rs (see
matrix_common.py for the environment). Every check raises on failure; the last line printed
is "ok".
"""

import io
from decimal import Decimal

import django
from django.conf import settings

from matrix_common import DIRECT, HELD_ID, PROXY, TABLE, check, masked_email, tls_options


def database(params):
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params["dbname"],
        "USER": params["user"],
        "PASSWORD": params["password"],
        "HOST": params["host"],
        "PORT": params["port"],
        "OPTIONS": tls_options(params),
    }


settings.configure(
    DATABASES={"default": database(PROXY), "direct": database(DIRECT)},
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "matrixapp"],
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402 (needs setup first)
from django.core.management import call_command  # noqa: E402
from django.db import ProgrammingError, connection, transaction  # noqa: E402

from matrixapp.models import Customer, Note  # noqa: E402

# Migrate: contrib apps' migrations (tables, indexes, deferred foreign keys) and the app's own
# table by syncdb; the second identity finds them applied.
call_command("migrate", run_syncdb=True, verbosity=0)

with connection.cursor() as cursor:
    cursor.execute("SELECT current_user")
    check(cursor.fetchone()[0] == "app_rw", "upstream role")

# CRUD, in a transaction and out of one.
Note.objects.filter(body__startswith="matrix").delete()
with transaction.atomic():
    for i in range(5):
        Note.objects.create(customer_id=2, body=f"matrix {i}", score=Decimal(i) / 4)
note = Note.objects.get(body="matrix 3")
note.score = Decimal("99.50")
note.save()
Note.objects.filter(body="matrix 0").delete()
scores = list(Note.objects.filter(body__startswith="matrix").order_by("score").values_list("score", flat=True))
check(scores == [Decimal("0.25"), Decimal("0.50"), Decimal("1.00"), Decimal("99.50")], f"{scores}")
group, _ = Group.objects.get_or_create(name="matrix")
user, _ = User.objects.get_or_create(username=f"matrix-{HELD_ID}")
user.groups.add(group)
check(list(user.groups.values_list("name", flat=True)) == ["matrix"], "many-to-many")

# Results equal those of a direct connection.
mine = list(Customer.objects.order_by("id").values_list("id", "name"))
theirs = list(Customer.objects.using("direct").order_by("id").values_list("id", "name"))
check(mine == theirs, f"{mine} != {theirs}")

# A masked column loads into the model as an ordinary string.
jane = Customer.objects.get(pk=1)
check(masked_email(jane.email), f"masked: {jane.email}")
check(Note.objects.select_related("customer").filter(customer_id=2).count() == 4, "join")
# .iterator() streams through a server-side cursor (DECLARE, FETCH in chunks).
with transaction.atomic():
    streamed = list(Customer.objects.filter(pk__lte=2).order_by("pk").iterator(chunk_size=1))
check([c.pk for c in streamed] == [1, 2] and masked_email(streamed[0].email), "iterator")

# A refusal is Django's ProgrammingError with pgwarden's message; the connection goes on.
try:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {TABLE}")
    raise AssertionError("DROP TABLE went through")
except ProgrammingError as e:
    check("pgwarden" in str(e), f"refusal: {e}")
check(Customer.objects.filter(pk=2).values_list("name", flat=True).get() == "John", "usable")

# A held statement (the ORM's DELETE) waits for the DBA, then completes.
Customer.objects.create(id=HELD_ID, name="held", email="held@example.org")
deleted, _ = Customer.objects.filter(pk=HELD_ID).delete()
check(deleted == 1, f"held DELETE: {deleted}")

# Introspection.
with connection.cursor() as cursor:
    tables = connection.introspection.table_names(cursor)
    check(TABLE in tables and f"{TABLE}_notes" in tables and "auth_user" in tables, "tables")
    columns = [c.name for c in connection.introspection.get_table_description(cursor, TABLE)]
    check(columns == ["id", "name", "email"], f"columns: {columns}")
    constraints = connection.introspection.get_constraints(cursor, "auth_user_groups")
    check(any(c["foreign_key"] for c in constraints.values()), "foreign keys")
out = io.StringIO()
call_command("inspectdb", TABLE, stdout=out)
check(f"db_table = '{TABLE}'" in out.getvalue() and "email = models.TextField" in out.getvalue(),
      "inspectdb")

print("ok")
