"""The HTTP API's request bodies (pydantic, strict: a wrong type or an unknown field is a 422 naming it).

Imported by ``textrec.serve.app`` only when an app is built, so the core install needs no pydantic. No
``from __future__ import annotations`` here: FastAPI reads these annotations at runtime.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from textrec.serve.service import MAX_BATCH, MAX_CANDIDATES, MAX_HISTORY, MAX_K, MAX_NEW_ITEMS, MAX_TEXT

Key = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[Key], Field(min_length=1, max_length=MAX_CANDIDATES)]  # rank only these


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[Key], Field(min_length=1, max_length=MAX_HISTORY)] | None = None
    user: Key | None = None
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    exclude_history: StrictBool = True
    filter: Filter | None = None

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
    model_config = ConfigDict(extra="forbid")
    key: Key
    text: Text | None = None
    attributes: Annotated[dict[Key, Text], Field(max_length=50)] | None = None

    @model_validator(mode="after")
    def has_content(self):
        if not (self.text or "").strip() and not self.attributes:
            raise ValueError("an item needs a non-empty 'text' or 'attributes'")
        return self


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[ItemIn], Field(min_length=1, max_length=MAX_NEW_ITEMS)]
