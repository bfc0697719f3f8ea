"""The request schema of `POST /v1/score`, generated from a model's data config.

Each model input, the timestamp, the entity keys and the event id column become named, typed
fields, so `/docs` shows the real field names and a bad event is refused (422) with the field
and the reason before anything is scored. Validation runs in pydantic-core on the raw body.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NotRequired, Required

import numpy as np
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from hybrid_ad.core.detector import Detector

MAX_EVENTS = 1000
"""Events in one request at most; more is refused (422) before validation of the events."""
EPOCH = datetime(1970, 1, 1)
EPOCH_UTC = EPOCH.replace(tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
NANOSECOND_RANGE_US = 9_223_372_036_854_775
"""Times the scorer's nanosecond clock holds (about 1677 to 2262), in microseconds either side
of the epoch; a time beyond becomes NaT, which the scorer refuses as a missing timestamp."""
NAT = np.iinfo(np.int64).min
MAX_ERRORS = 20
"""Validation problems listed in one 422 answer (the first one is also the `error` line)."""


class RequestError(Exception):
    """A request the schema refuses: `error` is one line, `detail` FastAPI-style problems."""

    def __init__(self, error: str, detail: list[dict[str, Any]]) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


class EventSchema:
    """The fields a model needs per event, and a validator for one event or a list of them."""

    def __init__(self, detector: Detector) -> None:
        data = detector.config.data
        assert detector.feature_columns_ is not None
        fields: dict[str, Any] = {}
        if data.event_id is not None:
            fields[data.event_id] = Required[
                Annotated[str | int, Field(description="the event's unique id")]
            ]
        if data.timestamp_unit == "datetime":
            time_type: Any = Annotated[
                datetime, Field(description="event time, ISO 8601 (naive times are UTC)")
            ]
        else:
            unit = "seconds" if data.timestamp_unit == "s" else "milliseconds"
            time_type = Annotated[
                float, Field(allow_inf_nan=False, description=f"event time in {unit}")
            ]
        fields[data.timestamp] = Required[time_type]
        numbers = [] if data.timestamp_unit == "datetime" else [data.timestamp]
        for key in data.entity_keys:
            fields[key] = Required[Annotated[str | int, Field(description="entity key")]]
        behavioural = detector.config.features.behavioural
        values = behavioural.values if behavioural is not None else []
        for name in [*detector.feature_columns_, *values]:
            if name not in fields:
                numbers.append(name)
                fields[name] = Required[
                    Annotated[float, Field(allow_inf_nan=False, description="model input")]
                ]
        if behavioural is not None and behavioural.label_risk is not None and data.label:
            fields[data.label] = NotRequired[
                Annotated[
                    int | None,
                    Field(ge=0, le=1, description="label when known (label-risk features)"),
                ]
            ]
        event = TypedDict("Event", fields)  # type: ignore[misc]
        event.__pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[attr-defined]
        self.columns = list(fields)
        """The columns handed to the scorer, in schema order."""
        self._times = data.timestamp if data.timestamp_unit == "datetime" else None
        self._numbers = set(numbers)
        self._label = data.label
        self._one = TypeAdapter(event)
        self._many = TypeAdapter(Annotated[list[event], Field(max_length=MAX_EVENTS)])  # type: ignore[valid-type]

    def json_schema(self) -> dict[str, Any]:
        """One event's JSON schema, for the OpenAPI document."""
        return self._one.json_schema(ref_template="#/components/schemas/{model}")

    def parse(self, body: bytes) -> tuple[list[dict[str, Any]], bool]:
        """The events of a request body and whether it was one object (not an array)."""
        stripped = body.lstrip()
        many = stripped[:1] == b"["
        try:
            if many:
                return self._many.validate_json(body), False
            return [self._one.validate_json(body)], True
        except ValidationError as error:
            raise _request_error(error, many) from None

    def example(self) -> dict[str, Any]:
        """One made-up event as columns (time now, keys "warm-up", inputs 0): scored once,
        unremembered, at start and reload, so the first request does not pay the first
        call's costs (numba's cached kernels, XGBoost's and torch's first runs)."""
        event: dict[str, Any] = dict.fromkeys(self._numbers, 0.0)
        for name in self.columns:
            if name == self._times:
                event[name] = datetime.now(UTC)
            elif name not in event and name != self._label:
                event[name] = "warm-up"
        return self.columns_of([event])

    def columns_of(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Validated events as columns, the batch form `LiveScorer.score_many` takes.

        Numbers go as float arrays and times as UTC `datetime64` (naive times read as UTC, as
        the scorer reads them), so the scorer takes its typed paths and does not parse them
        again: a list of datetimes would go through `pd.to_datetime`, 4 ms of a 5 ms
        single-event call."""
        columns: dict[str, Any] = {}
        for name in self.columns:
            values = [event.get(name) for event in events]
            if name == self._times:
                micros = [_micros(value) for value in values]
                columns[name] = np.array(micros, np.int64).view("datetime64[us]")
            elif name in self._numbers:
                columns[name] = np.array(values, np.float64)
            else:
                columns[name] = values
        return columns


def _micros(value: datetime) -> int:
    """A validated time as microseconds since the epoch in UTC (naive times are UTC); integer
    arithmetic, five times faster than numpy converting the datetimes itself."""
    epoch = EPOCH if value.tzinfo is None else EPOCH_UTC
    micros = (value - epoch) // MICROSECOND
    return micros if -NANOSECOND_RANGE_US < micros < NANOSECOND_RANGE_US else NAT


def _request_error(error: ValidationError, many: bool) -> RequestError:
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    detail = [
        {"loc": ["body", *problem["loc"]], "msg": problem["msg"], "type": problem["type"]}
        for problem in problems[:MAX_ERRORS]
    ]
    first = problems[0]
    location = list(first["loc"])
    where = []
    if many and location and isinstance(location[0], int):
        where.append(f"event {location.pop(0)}")
    if location:
        where.append(f"field '{'.'.join(str(part) for part in location)}'")
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    line = f"{': '.join(where) or 'body'}: {first['msg']}{suffix}"
    return RequestError(line, detail)
