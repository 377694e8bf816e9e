"""The "seed" case of scripts/bench: the Python module datalayer ports, doing the same job.

SQLAlchemy 2 + psycopg 3 with the engine's default QueuePool (create_engine's defaults), and a
declarative `User` model: each operation opens a Session, loads one user by random id with
`Session.get` (a new Session always asks the database), and closes it, the web-handler pattern
of the engine case.

    python bench_seed.py URL SECONDS CLIENTS ROWS

Prints operations per second. scripts/bench runs it from a venv under target/ (see there).
"""

import random
import sys
import threading
import time
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


def main() -> None:
    url, seconds, clients, rows = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    # The same server and sslmode as the other cases; psycopg's dialect name in the scheme.
    engine = create_engine(url.replace("postgres://", "postgresql+psycopg://", 1))
    counts = [0] * clients
    start = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        ids = random.Random(index)
        start.wait()
        deadline = time.monotonic() + seconds
        done = 0
        while time.monotonic() < deadline:
            for _ in range(16):
                with Session(engine) as session:
                    if session.get(User, ids.randint(1, rows)) is None:
                        raise SystemExit("a user id between 1 and ROWS is missing")
            done += 16
        counts[index] = done

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    engine.dispose()
    print(sum(counts) / seconds)


if __name__ == "__main__":
    main()
