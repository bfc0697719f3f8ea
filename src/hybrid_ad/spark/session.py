"""The SparkSession: local by default, with the settings the jobs rely on."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid_ad.errors import HybridADError, InputError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

JAVA_HOMES = Path("/usr/lib/jvm")
SETTINGS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Parquet nanosecond timestamps (what pandas writes) arrive as int64 nanoseconds, which
    # the jobs turn back into the same timestamps the local engine reads: Spark's own
    # timestamps hold microseconds only.
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.session.timeZone": "UTC",
    # timestamps written as UTC instants (not INT96), which pandas reads as pandas wrote them
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.adaptive.enabled": "true",
}
PANDAS_WARNING = "ignore:PySpark does not yet fully support pandas:FutureWarning"
"""pyspark 4.3 warns about pandas 3 on every pandas call; the jobs' conversions are tested."""
_ERROR_LINE = re.compile(r"hybrid_ad\.errors\.(\w+): (.+)")


def ensure_java_home() -> None:
    """Point JAVA_HOME at a Java 17 when none is set and `java` may be another version."""
    if os.environ.get("JAVA_HOME"):
        return
    candidates = sorted(JAVA_HOMES.glob("java-17-openjdk*")) if JAVA_HOMES.is_dir() else []
    if candidates:
        os.environ["JAVA_HOME"] = str(candidates[0])


def spark_session(master: str = "local[2]", settings: dict[str, str] | None = None) -> SparkSession:
    """The active session, or a new one on `master` (a running session is reused as it is)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise InputError(
            "--engine spark needs pyspark: pip install 'hybrid-ad[spark]' (and Java 17)"
        ) from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    ensure_java_home()
    # workers run this interpreter, which has hybrid-ad (a cluster's need it installed too)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYTHONWARNINGS", PANDAS_WARNING)  # the workers'
    warnings.filterwarnings("ignore", PANDAS_WARNING.split(":")[1], FutureWarning)
    builder = SparkSession.builder.master(master).appName("hybrid-ad")
    for key, value in {**SETTINGS, **(settings or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


@contextmanager
def user_errors() -> Iterator[None]:
    """A hybrid-ad error raised inside a Spark task comes back as the same one-line error."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JJavaError) as exc:
        found = _ERROR_LINE.findall(str(exc))
        if not found:
            raise
        kind, message = found[-1]
        error = next((cls for cls in _error_classes() if cls.__name__ == kind), HybridADError)
        raise error(message.strip()) from None


def _error_classes() -> list[type[HybridADError]]:
    classes: list[type[HybridADError]] = [HybridADError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    return classes
