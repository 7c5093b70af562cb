"""The Gradio interface over a `ReviewSession`: upload a query, see the candidates with their evidence,
decide; browse the gallery. Only layout and event wiring live here; every decision goes through the
session, so it behaves the same with or without a browser.

Every string the app renders that it did not write itself -- identities and image ids from a gallery's CSV,
species, the gallery's folder name and revision, uploaded file names, typed search text, and error messages
(which quote them) -- goes through `literal` before it reaches Markdown, so a name like
`<img src=x onerror=...>` is shown as those characters, never as an element, a link or formatting. Button
labels, dropdown choices and gallery captions are set as plain text (Gradio does not parse them as HTML).
Serving (loopback warning, login, upload clean-up) is `serving`."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

from PIL import Image

from .serving import UploadFolder, exposure_warning, stop_on_termination
from .session import Proposal, ReviewSession

logger = logging.getLogger(__name__)
ALL_SPECIES = "all species"
THUMBNAIL_SIDE = 128
SCORE_NAMES = {"local": "local score", "fusion": "fused score"}  # global's score is the cosine, shown anyway
SAFE_CHARACTERS = frozenset(" /")  # besides letters and digits: what `literal` leaves as it is


def literal(value: object) -> str:
    """`value` as literal text inside Gradio Markdown (which also passes HTML through): every character
    other than a letter, a digit, a space or `/` becomes an HTML numeric character reference (`<` -> `&#60;`),
    which the browser shows as that character but neither the Markdown renderer nor the HTML parser reads
    as markup (no element, emphasis, link, code span or heading); line breaks and tabs become spaces. The one
    escape for every user-derived string the app shows (see the module docstring). Not for code spans,
    where references are shown as typed: the app uses none around such strings."""
    text = " ".join(str(value).splitlines()).replace("\t", " ")
    return "".join(c if c.isalnum() or c in SAFE_CHARACTERS else f"&#{ord(c)};" for c in text)


def parse_boxes(text: str, num_photos: int) -> list[list[float] | None] | None:
    """'x, y, w, h' per photo, separated by ';' (blank: whole images)."""
    text = (text or "").strip()
    if not text:
        return None
    boxes = []
    for part in text.split(";"):
        values = [v for v in part.replace(",", " ").split()]
        try:
            box = [float(v) for v in values]
        except ValueError:
            raise ValueError(f"box {part.strip()!r}: give four numbers x, y, w, h") from None
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"box {part.strip()!r}: give four numbers x, y, w, h with w, h > 0")
        boxes.append(box)
    if len(boxes) != num_photos:
        raise ValueError(f"{len(boxes)} boxes for {num_photos} photos; give one box per photo (separated by ';')")
    return boxes


def _format_probability(value: float | None) -> str:
    return "not calibrated" if value is None else f"{value:.2f}"


def describe_suggestion(proposal: Proposal) -> str:
    """The new-individual suggestion: the best cosine against the gallery's calibrated cosine threshold,
    whatever the method ranked by (as `wildreid identify` decides)."""
    ranking = proposal.ranking
    if not ranking.candidates:
        return "No candidates."
    best = ranking.candidates[0]
    note = f"  \n{ranking.note}" if ranking.note else ""
    if ranking.suggest_new is None:
        return (f"Best match **{literal(best.identity)}** (by {ranking.method}). No new-individual threshold is "
                "known: run `wildreid calibrate` on this gallery." + note)
    if ranking.suggest_new:
        return (f"Suggestion: **new individual**: the best cosine with any gallery image searched, "
                f"{ranking.best_cosine:.3f}, is below the threshold {ranking.threshold:.3f}." + note)
    return (f"Suggestion: **{literal(best.identity)}** (by {ranking.method}): the best cosine, "
            f"{ranking.best_cosine:.3f}, is at or above the new-individual threshold {ranking.threshold:.3f}." + note)


def describe_candidate(rank: int, candidate) -> str:
    parts = [f"P(same) {_format_probability(candidate.probability)}", f"method: {candidate.method}"]
    if candidate.method in SCORE_NAMES:
        parts.append(f"{SCORE_NAMES[candidate.method]} {candidate.score:.3f}")
    parts += [f"cosine {candidate.global_score:.3f}", f"{candidate.verified_matches} verified local matches"]
    text = (f"**{rank}. {literal(candidate.identity)}**: " + " · ".join(parts)
            + f"  \nbest gallery image *{literal(candidate.image_id)}*, matched by query photo {candidate.photo + 1}")
    return text + (f"  \n{literal(candidate.note)}" if candidate.note else "")


def build_app(session: ReviewSession):
    """The Blocks app; call `.launch(...)` on it (see `launch`)."""
    import gradio as gr

    k = session.top_k

    def gallery_summary() -> str:
        metadata = session.gallery.metadata
        species = ", ".join(literal(name) for name in session.species) or "no species"
        return (f"Gallery *{literal(session.gallery_dir.name)}*: {len(metadata)} images of "
                f"{metadata['identity'].nunique()} individuals ({species}); revision *{literal(session.revision)}*")

    def hidden_slots() -> list:
        updates = []
        for _ in range(k):
            updates += [gr.update(visible=False), gr.update(value=""), gr.update(value=None), gr.update(value=None),
                        gr.update(value="Same as", interactive=False)]
        return updates

    def show(proposal: Proposal, status: str) -> list:
        updates = [proposal.id, status, describe_suggestion(proposal)]
        for i in range(k):
            if i < len(proposal.candidates):
                candidate = proposal.candidates[i]
                updates += [gr.update(visible=True), describe_candidate(i + 1, candidate), candidate.pair,
                            candidate.explanation, gr.update(value=f"Same as {candidate.identity}", interactive=True)]
            else:
                updates += [gr.update(visible=False), "", None, None, gr.update(value="Same as", interactive=False)]
        return updates

    def find(files, box_text, species):
        try:
            paths = [f if isinstance(f, str) else f.name for f in (files or [])]
            photos = session.read_photos(paths, parse_boxes(box_text, len(paths)))
            proposal = session.propose(photos, None if species in (None, ALL_SPECIES) else species)
        except ValueError as error:
            return [None, f"Error: {literal(error)}", ""] + hidden_slots()
        shown = len(proposal.candidates)
        return show(proposal, f"{shown} candidates for {len(photos)} photo(s) by the {proposal.ranking.method} method.")

    def after_decision(text: str):
        return text, gallery_summary()

    def same_as(index: int):
        def handler(proposal_id):
            try:
                proposal = session.proposal(proposal_id or "")
                identity = proposal.candidates[index].identity
                record = session.decide(proposal.id, "same", identity=identity)
            except (ValueError, IndexError) as error:
                return after_decision(f"Error: {literal(error)}")
            return after_decision(f"Decision recorded: same as **{literal(identity)}**; added "
                                  f"{len(record['added_image_ids'])} image(s) to the gallery.")
        return handler

    def new_individual(proposal_id, name):
        try:
            record = session.decide(proposal_id or "", "new", name=name)
        except ValueError as error:
            return after_decision(f"Error: {literal(error)}")
        return after_decision(f"Decision recorded: new individual **{literal(record['identity'])}**; added "
                              f"{len(record['added_image_ids'])} image(s) to the gallery.")

    def skip(proposal_id):
        try:
            session.decide(proposal_id or "", "skip")
        except ValueError as error:
            return after_decision(f"Error: {literal(error)}")
        return after_decision("Decision recorded: skipped (the gallery is unchanged).")

    def undo():
        try:
            record = session.undo()
        except ValueError as error:
            return after_decision(f"Error: {literal(error)}")
        return after_decision(f"Undone: {record['undone_decision']}"
                              + (f" {literal(record['identity'])}" if record["identity"] else "")
                              + f"; removed {len(record['removed_image_ids'])} image(s) from the gallery."
                              + ("" if record.get("query_reopened", True) else
                                 " (a decision from the audit log: upload its photos again to decide anew)"))

    def browse(search):
        items = []
        found = session.individuals(search or "")
        for individual in found:
            try:
                thumbnail = session.gallery_crop(individual["thumbnail"]).copy()
                thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            except (OSError, ValueError, KeyError):  # a moved file: show the individual without its picture
                thumbnail = Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (200, 200, 200))
            items.append((thumbnail, f"{individual['identity']} ({individual['images']} images)"))
        matching = f" matching '{literal(search.strip())}'" if (search or "").strip() else ""
        return f"{len(found)} individuals{matching}", items

    with gr.Blocks(title="wildreid review", analytics_enabled=False) as app:
        gr.Markdown("# wildreid review\nUpload photos of one animal, compare it with the top candidates, decide.")
        summary = gr.Markdown(gallery_summary(), elem_id="gallery-summary", latex_delimiters=[])
        proposal_state = gr.State(None)
        with gr.Tab("Review"):
            with gr.Row():
                with gr.Column(scale=1):
                    files = gr.File(file_count="multiple", file_types=["image"], label="Query photos (one animal)",
                                    elem_id="query-files")
                    box = gr.Textbox(label="Box x, y, w, h (optional; one per photo, separated by ;)",
                                     elem_id="query-box")
                    species = gr.Dropdown([ALL_SPECIES, *session.species], value=ALL_SPECIES, label="Species",
                                          elem_id="species")
                    find_button = gr.Button("Find candidates", variant="primary", elem_id="find")
                    status = gr.Markdown("", elem_id="status", latex_delimiters=[])
                with gr.Column(scale=3):
                    suggestion = gr.Markdown("", elem_id="suggestion", latex_delimiters=[])
                    with gr.Row():
                        name = gr.Textbox(label="Name of a new individual", elem_id="new-name", scale=2)
                        new_button = gr.Button("New individual", elem_id="decide-new")
                        skip_button = gr.Button("Skip", elem_id="skip")
                        undo_button = gr.Button("Undo last decision", elem_id="undo")
                    slots = []
                    for i in range(k):
                        with gr.Group(visible=False, elem_id=f"candidate-{i}") as group:
                            text = gr.Markdown("", elem_id=f"candidate-{i}-text", latex_delimiters=[])
                            with gr.Row():
                                pair = gr.Image(label="query | best gallery image", type="numpy", interactive=False,
                                                elem_id=f"candidate-{i}-pair")
                                match = gr.Image(label="verified local correspondences", type="numpy",
                                                 interactive=False, elem_id=f"candidate-{i}-match")
                            same = gr.Button("Same as", interactive=False, elem_id=f"same-{i}")
                        slots.append((group, text, pair, match, same))
        with gr.Tab("Gallery") as gallery_tab:
            with gr.Row():
                search = gr.Textbox(label="Search individuals by name", elem_id="gallery-search", scale=3)
                search_button = gr.Button("Search", elem_id="gallery-search-button")
            found = gr.Markdown("", elem_id="gallery-count", latex_delimiters=[])
            thumbnails = gr.Gallery(label="Individuals", columns=6, fit_columns=False, height=480, object_fit="contain",
                                    elem_id="gallery-browser")

        slot_outputs = [component for slot in slots for component in slot]
        find_button.click(find, [files, box, species], [proposal_state, status, suggestion, *slot_outputs])
        for i, (_, _, _, _, same) in enumerate(slots):
            same.click(same_as(i), [proposal_state], [status, summary])
        new_button.click(new_individual, [proposal_state, name], [status, summary])
        skip_button.click(skip, [proposal_state], [status, summary])
        undo_button.click(undo, [], [status, summary])
        search_button.click(browse, [search], [found, thumbnails])
        search.submit(browse, [search], [found, thumbnails])
        gallery_tab.select(browse, [search], [found, thumbnails])  # decisions change it: refresh on every visit
    return app


def launch(session: ReviewSession, *, host: str = "127.0.0.1", port: int = 7860, max_upload_bytes: int | None = None,
           auth: tuple[str, str] | None = None, **kwargs: Any):
    """Serve the app; blocks until it is stopped (Ctrl-C, SIGTERM or SIGHUP).

    Binds to 127.0.0.1 unless told otherwise, and prints a loud warning to stderr when `host` reaches beyond
    loopback (`serving.exposure_warning`). auth: (user, password) a browser must log in with (Gradio's
    `auth`; see `serving.resolve_auth`). Uploads over the limit are refused by the server before the session
    sees them. Uploads and the pictures the app serves live in a folder of this app's own
    (`serving.UploadFolder`), removed when this returns (with `prevent_thread_lock=True`, at interpreter exit)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    blocking = not kwargs.get("prevent_thread_lock")
    # A stop request from here on (also while the app is still being built) ends it with its folder removed.
    with stop_on_termination() if blocking else contextlib.nullcontext():
        warning = exposure_warning(host, port, auth)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        uploads = None
        try:
            uploads = UploadFolder()  # before the Blocks are built: components note Gradio's folder when made
            app = build_app(session)
            limit = max_upload_bytes or session.max_upload_bytes
            return app.launch(server_name=host, server_port=port, max_file_size=limit, share=False, auth=auth,
                              **kwargs)
        finally:
            if blocking and uploads is not None:
                uploads.close()
