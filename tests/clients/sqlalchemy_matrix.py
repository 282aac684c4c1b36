"""SQLAlchemy 2 ORM (on psycopg 3) through pgwarden: driven by tests/client_matrix.rs (see
matrix_common.py for the environment). Every check raises on failure; the last line printed
is "ok".
"""

from sqlalchemy import ForeignKey, String, create_engine, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from matrix_common import DIRECT, HELD_ID, PROXY, TABLE, check, masked_email, tls_options


def engine(params):
    url = URL.create(
        "postgresql+psycopg",
        username=params["user"],
        password=params["password"],
        host=params["host"],
        port=params["port"],
        database=params["dbname"],
        query=tls_options(params),
    )
    return create_engine(url, pool_size=2)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """The seeded table; `email` is masked for us."""

    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None]
    email: Mapped[str | None]


class Order(Base):
    """A table of the ORM's own, created by create_all."""

    __tablename__ = f"{TABLE}_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey(f"{TABLE}.id"))
    item: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int]


proxy = engine(PROXY)
direct = engine(DIRECT)

# Create schema: the ORM's table (CREATE TABLE with a foreign key), checkfirst.
Base.metadata.create_all(proxy, tables=[Order.__table__])

with Session(proxy) as session:
    check(session.scalar(text("SELECT current_user")) == "app_rw", "upstream role")

    # CRUD through the ORM.
    session.query(Order).filter(Order.item.like("matrix-%")).delete()
    session.add_all([Order(customer_id=1, item=f"matrix-{i}", quantity=i) for i in range(5)])
    session.commit()
    orders = session.scalars(select(Order).where(Order.item.like("matrix-%")).order_by(Order.id)).all()
    check([o.quantity for o in orders] == list(range(5)), "created orders")
    orders[0].quantity = 50
    session.commit()
    session.delete(orders[1])
    session.commit()
    quantities = session.scalars(
        select(Order.quantity).where(Order.item.like("matrix-%")).order_by(Order.quantity)
    ).all()
    check(quantities == [2, 3, 4, 50], f"updated and deleted: {quantities}")

    # Results equal those of a direct connection.
    names = select(Customer.id, Customer.name).order_by(Customer.id)
    with Session(direct) as other:
        check(session.execute(names).all() == other.execute(names).all(), "same rows")

    # A masked column loads into the model as an ordinary string; changing another column
    # of that object writes only that column.
    jane = session.get(Customer, 1)
    check(masked_email(jane.email), f"masked: {jane.email}")
    jane.name = "Jane"
    session.commit()

    # Streaming with yield_per (a server-side cursor: DECLARE, then FETCH in batches).
    streamed = session.scalars(
        select(Customer).where(Customer.id <= 2).order_by(Customer.id).execution_options(yield_per=1)
    ).all()
    check([c.id for c in streamed] == [1, 2] and masked_email(streamed[0].email), "yield_per")
    session.commit()

    # A refusal is SQLAlchemy's ProgrammingError (42501 underneath) with pgwarden's
    # message; after a rollback the session goes on.
    try:
        session.execute(text(f"DROP TABLE {TABLE}"))
        raise AssertionError("DROP TABLE went through")
    except ProgrammingError as e:
        check(e.orig.sqlstate == "42501" and "pgwarden" in str(e), f"refusal: {e}")
        session.rollback()
    check(session.scalar(select(Customer.name).where(Customer.id == 2)) == "John", "usable")

    # A held statement (the ORM's DELETE) waits for the DBA, then completes.
    session.add(Customer(id=HELD_ID, name="held", email="held@example.org"))
    session.commit()
    session.delete(session.get(Customer, HELD_ID))
    session.commit()
    check(session.get(Customer, HELD_ID) is None, "held row deleted")

# Reflection / introspection.
inspector = inspect(proxy)
check(TABLE in inspector.get_table_names(), "table names")
columns = [(c["name"], str(c["type"])) for c in inspector.get_columns(TABLE)]
check(columns == [("id", "INTEGER"), ("name", "TEXT"), ("email", "TEXT")], f"columns: {columns}")
check(inspector.get_pk_constraint(TABLE)["constrained_columns"] == ["id"], "primary key")
keys = inspector.get_foreign_keys(Order.__tablename__)
check(keys and keys[0]["referred_table"] == TABLE, f"foreign keys: {keys}")

proxy.dispose()
direct.dispose()
print("ok")
