"""The HTTP API's request bodies (pydantic, strict: a wrong type or an unknown field is a 422 naming it).

The OpenAPI schema says exactly what is accepted (checked by schemathesis in ``tests/test_serve_fuzz.py``): an
optional field is left out, never sent as ``null`` (a ``null`` is refused), and the rules across fields ("exactly
one of items or user", "a text or attributes") are in the schema as ``oneOf`` / ``anyOf``.

Imported by ``textrec.serve.app`` only when an app is built, so the core install needs no pydantic. No
``from __future__ import annotations`` here: FastAPI reads these annotations at runtime.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator, model_validator

from textrec.serve.service import MAX_BATCH, MAX_CANDIDATES, MAX_FEATURE_DIM, MAX_HISTORY, MAX_K, MAX_NEW_ITEMS, MAX_TEXT

Key = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]
Attributes = Annotated[dict[Key, Text], Field(max_length=50)]
# {feature table: its row for the item}; the table and the row's width are checked against the run (``Service``), and
# the app's schema names this run's tables and widths (``textrec.serve.app``)
FLOAT32_MAX = 3.4028234663852886e38  # a vector is stored as float32: a larger number would become infinite
Number = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
Vector = Annotated[list[Number], Field(min_length=1, max_length=MAX_FEATURE_DIM)]
Features = Annotated[dict[Key, Vector], Field(max_length=8)]


def _no_null_defaults(schema: dict) -> None:
    """Optional fields default to None in Python but are absent (never null) on the wire."""
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None:
            del prop["default"]


def _one_history(schema: dict) -> None:
    _no_null_defaults(schema)
    schema["oneOf"] = [{"required": ["items"]}, {"required": ["user"]}]


def _has_content(schema: dict) -> None:
    _no_null_defaults(schema)
    schema["anyOf"] = [{"required": ["text"], "properties": {"text": {"pattern": r"\S"}}},
                       {"required": ["attributes"], "properties": {"attributes": {"minProperties": 1}}},
                       {"required": ["features"], "properties": {"features": {"minProperties": 1}}}]


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[Key], Field(min_length=1, max_length=MAX_CANDIDATES)]  # rank only these


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_history)
    # a None default is "not given": an explicit null is refused, as the schema says
    items: Annotated[list[Key], Field(min_length=1, max_length=MAX_HISTORY)] = None  # type: ignore[assignment]
    user: Key = None  # type: ignore[assignment]
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    exclude_history: StrictBool = True
    filter: Filter = None  # type: ignore[assignment]

    @field_validator("k", mode="before")
    @classmethod
    def integral_float(cls, v):  # JSON Schema's integer includes 3.0; a string "3" or true stays refused
        return int(v) if isinstance(v, float) and v.is_integer() else v

    @model_validator(mode="after")
    def one_history(self):
        if (self.items is None) == (self.user is None):
            raise ValueError("give exactly one of 'items' (a list of item keys) or 'user'")
        return self

    def only(self) -> list[str] | None:
        return self.filter.items if self.filter is not None else None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: Annotated[list[RecommendRequest], Field(min_length=1, max_length=MAX_BATCH)]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_has_content)
    key: Key
    text: Text = None  # type: ignore[assignment]
    attributes: Attributes = None  # type: ignore[assignment]
    features: Features = None  # type: ignore[assignment]  # for a model that reads feature tables (MISSRec)

    @model_validator(mode="after")
    def has_content(self):
        if not (self.text or "").strip() and not self.attributes and not self.features:
            raise ValueError("an item needs a non-empty 'text', 'attributes' or 'features'")
        return self


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[ItemIn], Field(min_length=1, max_length=MAX_NEW_ITEMS)]


# ---- responses: documented in the schema (``responses=``), not re-validated on the way out ----------------------
# extra="forbid" so that the schema lists every field sent, and schemathesis catches an undocumented one.

class Error(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: str  # one line, never a stack trace
    field: str | None = None  # the request field it is about, e.g. "items[3]" or "body"


class Recommended(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int
    item: str
    item_id: int  # the serve id
    score: float
    text: str


class RecommendOut(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_null_defaults)
    history: list[str]  # the history's keys the catalogue knows
    unknown: list[str]  # the ones it does not
    unknown_candidates: list[str] = None  # type: ignore[assignment]  # with a filter: its keys not in the catalogue
    recommendations: list[Recommended]


class BatchError(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: str


class BatchOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    results: list[RecommendOut | BatchError]  # one per request, in order


class ItemOut(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_null_defaults)
    item: str
    item_id: int
    text: str
    added: bool  # added while serving (kept in the journal)
    attributes: dict[str, str] = None  # type: ignore[assignment]


class ItemsOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemOut]


class AddedOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    added: list[ItemOut]
    items: int  # items served now


class DeletedOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deleted: str
    items: int


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str
    items: int
