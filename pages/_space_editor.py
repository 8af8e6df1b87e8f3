"""The Tune form's search space editor: every hyperparameter of the chosen search with its range or
choices and help, to narrow, fix or thin out. Layout only: `core.models.search_space` defines the space
and checks the edits."""

from __future__ import annotations

import math

import streamlit as st

from core.models import search_space


def space_editor(family: str, mode: str, image_size: int, augment: str) -> dict:
    """Draw the editor for this search; returns the edits (empty when the default space is kept).

    The edits go into `SearchSettings.space` as they are; a bad one is shown here at once and
    refused again when Start checks the settings.
    """
    space = search_space.default_space(family, mode, image_size, augment)
    prefix = f"tune_hp_{family}_{mode}_"
    edits: dict = {}
    with st.expander("Search space (hyperparameters)"):
        st.caption(
            "What each trial draws from. Narrow a range (the same value in both boxes fixes it) or untick choices "
            "(one left fixes it). Edits can only narrow the default space."
        )
        for hp in space.values():
            key = prefix + hp.name
            _start_from_default(key, hp)
            left, right = st.columns([3, 2])
            left.markdown(f"**{hp.name}** · {hp.describe()}")
            left.caption(hp.help)
            edit = _range_edit(right, key, hp) if hp.kind in search_space.RANGE_KINDS else _choice_edit(right, key, hp)
            if edit is not None:
                edits[hp.name] = edit
        try:
            edited = search_space.apply_edits(space, edits)
        except search_space.SpaceError as error:
            st.error(f"Search space: {error}", icon=":material/block:")
        else:
            if edits:
                st.caption("Edited: " + "; ".join(f"{name} {edited[name].describe()}" for name in edits))
        st.button("Reset to the default space", key=f"{prefix}reset", on_click=_forget, args=(prefix,),
                  icon=":material/restart_alt:", disabled=not edits)
    return edits


def _start_from_default(key: str, hp: search_space.Hyperparameter) -> None:
    """Fill the widgets with the default space, again whenever it changes (another input size) or
    Streamlit dropped their values (it forgets the widgets of a family that was not shown)."""
    widgets = [f"{key}_min", f"{key}_max"] if hp.kind in search_space.RANGE_KINDS else [f"{key}_choices"]
    if st.session_state.get(f"{key}_default") == hp and all(w in st.session_state for w in widgets):
        return
    st.session_state[f"{key}_default"] = hp
    if hp.kind in search_space.RANGE_KINDS:
        st.session_state[f"{key}_min"], st.session_state[f"{key}_max"] = hp.low, hp.high
    else:
        st.session_state[f"{key}_choices"] = list(hp.choices)


def _forget(prefix: str) -> None:
    for key in [k for k in st.session_state if str(k).startswith(prefix)]:
        del st.session_state[key]


def _range_edit(column, key: str, hp: search_space.Hyperparameter) -> dict | None:
    if hp.kind == search_space.INT:
        options = {"step": int(hp.step or 1)}
    else:  # log-scale rates read best as 1.0e-04; their arrows step by the lowest rate
        options = {"step": float(hp.step or hp.low or 0.01), "format": "%.1e" if hp.log else "%.2f"}
    low_box, high_box = column.columns(2)
    low = low_box.number_input(f"{hp.name} from", key=f"{key}_min", **options)
    high = high_box.number_input(f"{hp.name} to", key=f"{key}_max", **options)
    if math.isclose(low, hp.low) and math.isclose(high, hp.high):
        return None
    return {"min": low, "max": high}


def _choice_edit(column, key: str, hp: search_space.Hyperparameter) -> list | None:
    kept = column.multiselect(f"{hp.name} choices", list(hp.choices), key=f"{key}_choices", format_func=search_space.describe_value)
    return None if set(kept) == set(hp.choices) else kept
