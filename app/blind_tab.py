"""The Blind test tab: anonymous A/B pairs at matched bitrate from this session's comparisons, a vote of A, B or
tie with an optional comment, and the results of every vote with Wilson 95 % intervals and a binomial test.

Which codec is A and which is B is kept in the server-side session state and shown only after the vote.
"""

from __future__ import annotations

import gradio as gr

from app.feedback import error_message
from app.handlers import BlindHandler, PairRequest, VoteRequest


def build_blind_tab(handler: BlindHandler, state: gr.State) -> None:
    """The tab over `handler` (`new_pair`, `vote`, `results`, `export_votes`)."""
    gr.Markdown(
        "Spot checks without bias: two versions of the same frame that cost about the same bits, in random "
        "order, names hidden until you vote. Pairs come from the comparisons you ran in the **Compare** tab "
        "(with *match bitrate* or *TDIR flipped*). Votes are stored and survive a restart of the app."
    )
    with gr.Row():
        rater = gr.Textbox(label="your name or initials (stored with the vote)", max_length=100, elem_id="rater")
        reference = gr.Checkbox(False, label="show the original as a reference", elem_id="show-reference")
        draw = gr.Button("New pair", variant="primary", elem_id="new-pair")
    prompt = gr.Markdown("Press **New pair**.", elem_id="blind-status")
    with gr.Row():
        image_a = gr.Image(label="A", format="png", interactive=False, elem_id="image-a")
        image_b = gr.Image(label="B", format="png", interactive=False, elem_id="image-b")
    original = gr.Image(
        label="original (reference)", format="png", interactive=False, visible=False, elem_id="image-ref"
    )
    comment = gr.Textbox(label="comment (optional)", max_lines=3, max_length=2000, elem_id="comment")
    with gr.Row():
        vote_a = gr.Button("A is better", elem_id="vote-a")
        vote_tie = gr.Button("Tie", elem_id="vote-tie")
        vote_b = gr.Button("B is better", elem_id="vote-b")
    gr.Markdown("### Results of every vote")
    # the value a callable: the table is fresh at every page load
    table = gr.Dataframe(value=handler.results, interactive=False, elem_id="blind-results", wrap=True)
    gr.Markdown(
        "*Share for first*: of the decisive votes (ties left out), the share preferring the pair's first "
        "codec; its Wilson 95 % score interval; an exact two-sided binomial test against no preference."
    )
    with gr.Row():
        refresh = gr.Button("Refresh results", size="sm")
        export_btn = gr.Button("Export votes (CSV)", size="sm", elem_id="export")
    csv_file = gr.File(label="votes.csv", interactive=False, elem_id="votes-csv")

    def on_draw(session_state, show_reference: bool):
        try:
            view = handler.new_pair(PairRequest(bool(show_reference)), session_state)
        except Exception as e:
            return {prompt: error_message(e)}
        return {
            state: session_state,
            prompt: view.status,
            image_a: view.a,
            image_b: view.b,
            original: gr.Image(value=view.reference, visible=view.reference is not None),
        }

    def voter(choice: str):
        def on_vote(session_state, who: str, note: str, request: gr.Request):
            try:
                reveal = handler.vote(VoteRequest(choice, who, note), session_state, request.session_hash)
            except Exception as e:
                return {prompt: error_message(e)}
            return {
                state: session_state,
                prompt: reveal,
                table: handler.results(),
                comment: "",
                image_a: None,
                image_b: None,
                original: gr.Image(value=None, visible=False),
            }

        return on_vote

    def on_export(request: gr.Request):
        try:
            return {csv_file: handler.export_votes(request.session_hash)}
        except Exception as e:
            return {prompt: error_message(e)}

    outputs = [state, prompt, image_a, image_b, original]
    draw.click(on_draw, inputs=[state, reference], outputs=outputs, api_visibility="private")
    for button, choice in ((vote_a, "A"), (vote_b, "B"), (vote_tie, "tie")):
        button.click(
            voter(choice), inputs=[state, rater, comment], outputs=[*outputs, table, comment], api_visibility="private"
        )
    refresh.click(handler.results, outputs=table, api_visibility="private")
    export_btn.click(on_export, outputs=[csv_file, prompt], api_visibility="private")
