"""Schemathesis hooks for the OpenAPI run (`SCHEMATHESIS_HOOKS=schemathesis_hooks`).

The OpenAPI document names formats that JSON Schema cannot spell out; these strategies
make values that satisfy them, so that "schema-valid and refused" means a real disagreement.
An `upload-id` is one of the caller's uploads, made by the test before the run
(`EDITHOOK_TEST_UPLOAD_IDS`).
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import strategies as st

# `visible-text`: at least one visible character, no NUL and no unpaired surrogate.
_visible = st.characters(categories=["L", "N", "P", "S"])
_any_storable = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
schemathesis.openapi.format(
    "visible-text",
    st.builds(
        lambda before, mark, after: before + mark + after,
        st.text(_any_storable, max_size=20),
        _visible,
        st.text(_any_storable, max_size=20),
    ),
)

# `public-https-url`: https, a public host name, an optional path.
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
schemathesis.openapi.format(
    "public-https-url",
    st.builds(
        "https://{}.example.com/{}".format,
        _label,
        st.from_regex(r"[A-Za-z0-9._~/-]{0,40}", fullmatch=True),
    ),
)

# `upload-id`: an upload of the caller's, still kept.
schemathesis.openapi.format(
    "upload-id",
    st.sampled_from(os.environ.get("EDITHOOK_TEST_UPLOAD_IDS", "").split(",")),
)
