"""``imggenhub app``: a local web page over the same runs (Gradio, the ``[app]`` extra):
compose a job as the CLI does, draw a mask over a picture to redraw, run it on any backend,
watch it come home, browse every run. The page is a client of the run store and the
driver (``service.py``); it has no generation code of its own.

It listens on 127.0.0.1 unless told otherwise, and anywhere else only with a user and
password. Everything shown that came from outside (prompts, server text, progress) is
shown as text, never as markup."""


import ipaddress
import os

from ..errors import ImggenhubError, SpecError

DEFAULT_PORT = 7860
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TICK = 1.0  # seconds between the page's looks at a running run
# the fields an error's note may stand beside (the picture editor has no note: its errors
# stand beside the strength)
HINTED = ("prompts", "negative_prompt", "model", "flavor", "width", "height", "steps", "guidance",
          "seed", "num_images", "scheduler", "loras", "sweeps", "notify", "strength")


def check_listen(host: str, auth: str | None) -> tuple[str, str] | None:
    """The user and password to ask for (None: none, on the loopback only); one sentence
    for a host other than the loopback without ``--auth``, or a malformed one."""
    parsed = None
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise SpecError("--auth is USER:PASSWORD (both non-empty).")
        parsed = (user, password)
    loopback = host in LOOPBACK
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback and parsed is None:
        raise SpecError(f"--host {host[:60]} lets other machines reach the app and the runs; "
                        "give --auth USER:PASSWORD too (or listen on 127.0.0.1, the default).")
    return parsed


def build():
    """The page (a gradio Blocks)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from ..backends.hfjobs.flavors import TABLE as FLAVORS
    from ..job.models import PRESETS
    from . import service

    runner = service.Runner()
    models = sorted({"tiny-shapes", "tiny-random", *PRESETS})

    with gr.Blocks(title="imggenhub") as page:
        gr.Markdown("# imggenhub")
        current = gr.State(None)  # the run this page started last
        with gr.Tabs() as tabs:
            with gr.Tab("Compose", id="compose-tab"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompts = gr.Textbox(label="Prompts (one a line)", lines=4,
                                             elem_id="prompts")
                        negative = gr.Textbox(label="Negative prompt", elem_id="negative")
                        with gr.Row():
                            model = gr.Dropdown(models, value="tiny-shapes", label="Model",
                                                allow_custom_value=True, elem_id="model")
                            backend = gr.Radio(["local", "kaggle", "hf-jobs"], value="local",
                                               label="Backend", elem_id="backend")
                            flavor = gr.Dropdown(sorted(FLAVORS), value="t4-small",
                                                 label="Flavor (hf-jobs)",
                                                 allow_custom_value=True, elem_id="flavor")
                        with gr.Row():
                            width, height, steps, guidance = (
                                gr.Textbox(label=name, placeholder="the model's",
                                           elem_id=name.lower())
                                for name in ("Width", "Height", "Steps", "Guidance"))
                        with gr.Row():
                            seed = gr.Textbox(label="Seed", placeholder="random", elem_id="seed")
                            num_images = gr.Number(label="Images per prompt", value=1, precision=0,
                                                   elem_id="num-images")
                            scheduler = gr.Textbox(label="Scheduler", elem_id="scheduler")
                        loras = gr.Textbox(label="LoRAs (one a line: REF[:SCALE])", lines=2,
                                           elem_id="loras")
                        trained = gr.Dropdown(service.trained_loras(), multiselect=True,
                                              label="Your trained LoRAs (imggenhub train)",
                                              elem_id="trained")
                        sweeps = gr.Textbox(label="Sweeps (one a line, as --sweep)", lines=2,
                                            elem_id="sweeps")
                        notify = gr.Textbox(label="Notify URLs when it ends (optional)",
                                            elem_id="notify")
                    with gr.Column(scale=2):
                        picture = gr.ImageEditor(
                            label="Picture to redraw (optional); paint the part to redraw",
                            type="numpy", sources=["upload"], layers=False, elem_id="picture",
                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=16),
                            eraser=gr.Eraser(default_size=16))
                        picture_note = gr.Textbox(
                            service.describe_picture(None), show_label=False, container=False,
                            interactive=False, elem_id="picture-note")
                        strength = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="Strength",
                                             elem_id="strength")
                with gr.Row():
                    estimate_button = gr.Button("Estimate", elem_id="estimate")
                    run_button = gr.Button("Run", variant="primary", elem_id="run")
                status = gr.Textbox(label="Status", interactive=False, lines=6, elem_id="status")
                made = gr.Gallery(label="Pictures", columns=4, elem_id="made")
            with gr.Tab("Runs", id="runs-tab"):
                table = gr.Dataframe(
                    headers=["run", "name", "backend", "state", "images", "created"],
                    value=service.run_rows, interactive=False, elem_id="runs")
                with gr.Row():
                    chosen = gr.Dropdown(label="Run", choices=[], allow_custom_value=True,
                                         elem_id="chosen")
                    refresh = gr.Button("Refresh", elem_id="refresh")
                with gr.Row():
                    resume_button = gr.Button("Resume", elem_id="resume")
                    download_button = gr.Button("Download", elem_id="download")
                    cancel_button = gr.Button("Cancel", elem_id="cancel")
                    again_button = gr.Button("Run again with changes", elem_id="again")
                about = gr.Textbox(label="The run", interactive=False, lines=6, elem_id="about")
                with gr.Row():
                    query = gr.Textbox(label="Filter: prompt, seed, model...", elem_id="query")
                    order = gr.Dropdown(list(service.ORDERS), value="order made", label="Sort",
                                        elem_id="order")
                browsed = gr.Gallery(label="Its pictures (choose one for its settings)", columns=6,
                                     elem_id="browsed")
                settings = gr.JSON(label="The picture's settings", elem_id="settings")
            with gr.Tab("Compare", id="compare-tab"):
                with gr.Row():
                    with gr.Column():
                        left = gr.Dropdown(label="Run", choices=[], allow_custom_value=True,
                                           elem_id="left")
                        left_pictures = gr.Gallery(columns=3, elem_id="left-pictures")
                    with gr.Column():
                        right = gr.Dropdown(label="Run", choices=[], allow_custom_value=True,
                                            elem_id="right")
                        right_pictures = gr.Gallery(columns=3, elem_id="right-pictures")

        def form_of(prompts_, negative_, model_, backend_, flavor_, width_, height_, steps_,
                    guidance_, seed_, num_images_, scheduler_, loras_, trained_, sweeps_,
                    notify_, picture_, strength_):
            init, mask = _picture_and_mask(picture_)
            return service.Form(
                prompts=prompts_ or "", negative_prompt=negative_ or "",
                model=model_ or "", backend=backend_ or "local", flavor=flavor_ or "",
                width=_number(width_, "Width", int), height=_number(height_, "Height", int),
                steps=_number(steps_, "Steps", int),
                guidance=_number(guidance_, "Guidance", float),
                seed=_number(seed_, "Seed", int), num_images=_int(num_images_),
                scheduler=scheduler_ or "", loras=loras_ or "", trained=list(trained_ or []),
                sweeps=sweeps_ or "",
                notify=notify_ or "", init_image=init, mask_image=mask,
                strength=strength_ if init else None)

        def beside(sentence: str | None) -> list:
            """Each field's note: the error's sentence beside the field it names, else none."""
            named = service.field_of(sentence) if sentence else None
            named = "strength" if named == "picture" else named
            return [gr.update(info=f"⚠ {sentence}" if name == named else "")
                    for name in HINTED]  # "" clears a note (None would leave it)

        def start(*fields):
            try:
                watch = runner.submit(form_of(*fields))
            except ImggenhubError as exc:
                return [None, f"error: {exc}", [], *beside(str(exc))]
            except Exception as exc:  # noqa: BLE001 - one sentence on the page, never a trace
                return [None, f"error: {type(exc).__name__}: {exc}", [], *beside(None)]
            return [watch.run_id, "\n".join([f"run {watch.run_id}", *watch.lines[-5:]]), [],
                    *beside(None)]

        def priced(*fields):
            try:
                return [service.estimate_of(form_of(*fields)), *beside(None)]
            except ImggenhubError as exc:
                return [f"error: {exc}", *beside(str(exc))]
            except Exception as exc:  # noqa: BLE001
                return [f"error: {type(exc).__name__}: {exc}", *beside(None)]

        def _picture_and_mask(value):
            if not value or value.get("background") is None:
                return None, None
            import tempfile

            from PIL import Image

            background = Image.fromarray(value["background"]).convert("RGB")
            with tempfile.NamedTemporaryFile(suffix=".png", dir=service.uploads_dir()) as tmp:
                background.save(tmp.name)
                init = service.keep_picture(tmp.name)
            mask = service.mask_from_layers(value.get("layers"), background.size)
            return init, mask

        def look(run_id, seen):
            """The run's status and pictures, sent only when they changed (a run that has
            ended is not sent again each tick)."""
            if not run_id:
                return gr.update(), gr.update(), seen
            watch = runner.watch(run_id)
            lines = [f"run {run_id}"] + (watch.lines[-8:] if watch else [])
            now = service.pace(watch.lines) if watch and not watch.done else None
            if now:
                lines.insert(1, now)
            if watch and watch.done:
                lines.append(f"error: {watch.error}" if watch.error else "done")
            now = (run_id, len(watch.lines) if watch else 0, bool(watch and watch.done),
                   len(service.home(run_id)))
            if now == seen:
                return gr.update(), gr.update(), seen
            return "\n".join(lines), service.pictures(run_id), now

        def runs_now():
            rows = service.run_rows()
            ids = [r[0] for r in rows]
            return (rows, gr.update(choices=ids), gr.update(choices=ids),
                    gr.update(choices=ids), gr.update(choices=service.trained_loras()))

        def about_now(run_id, acting, query_="", order_="order made"):
            if not run_id:
                return "", [], gr.update()
            lines = [service.describe(run_id)]
            watch = runner.watch(run_id) if acting == run_id else None
            if watch is not None:
                lines += watch.lines[-6:]
                if watch.done:
                    lines.append(f"error: {watch.error}" if watch.error else "done")
            return "\n".join(lines), service.pictures(run_id, query_, order_), gr.update()

        def act(command):
            def handler(run_id):
                if not run_id:
                    return None, "choose a run first"
                try:
                    runner.command(run_id, command)
                except SpecError as exc:
                    return None, f"error: {exc}"
                except ImggenhubError as exc:
                    return None, f"error: {exc}"
                return run_id, f"{command} of run {run_id} started"
            return handler

        def again(run_id):
            if not run_id:
                return [gr.update()] * 15 + [gr.update()]
            f = service.form_of(run_id)
            text = lambda v: "" if v is None else str(v)  # noqa: E731
            return (f["prompts"], f["negative_prompt"], f["model"], text(f["width"]),
                    text(f["height"]), text(f["steps"]), text(f["guidance"]), text(f["seed"]),
                    f["num_images"], f["scheduler"], f["loras"], f["sweeps"],
                    f["init_image"], f["strength"] if f["strength"] is not None else 0.75,
                    "", gr.Tabs(selected="compose-tab"))

        def picked(run_id, query_, order_, event: gr.SelectData):
            return service.settings_of(run_id, event.index, query_, order_) if run_id else {}

        def browse(run_id, query_, order_):
            return service.pictures(run_id, query_, order_) if run_id else []

        fields = [prompts, negative, model, backend, flavor, width, height, steps, guidance,
                  seed, num_images, scheduler, loras, trained, sweeps, notify, picture,
                  strength]
        hinted = [{"prompts": prompts, "negative_prompt": negative, "model": model,
                   "flavor": flavor, "width": width, "height": height, "steps": steps,
                   "guidance": guidance, "seed": seed, "num_images": num_images,
                   "scheduler": scheduler, "loras": loras, "sweeps": sweeps, "notify": notify,
                   "strength": strength}[name] for name in HINTED]
        for handed_over in (picture.upload, picture.change):
            handed_over(service.describe_picture, [picture], [picture_note],
                        show_progress="hidden", trigger_mode="always_last")
        run_button.click(start, fields, [current, status, made, *hinted])
        estimate_button.click(priced, fields, [status, *hinted])
        timer = gr.Timer(TICK)
        seen = gr.State(None)
        timer.tick(look, [current, seen], [status, made, seen])
        acting = gr.State(None)  # the run a button of the Runs tab acts on
        refresh.click(runs_now, None, [table, chosen, left, right, trained])
        page.load(runs_now, None, [table, chosen, left, right, trained])
        chosen.change(about_now, [chosen, acting, query, order], [about, browsed, settings])
        for button, command in ((resume_button, "resume"), (download_button, "download"),
                                (cancel_button, "cancel")):
            button.click(act(command), [chosen], [acting, about])
        runs_timer = gr.Timer(TICK * 2)
        def about_tick(run_id, acting_on, query_, order_):
            watch = runner.watch(acting_on) if acting_on else None
            if not run_id or acting_on != run_id or watch is None:
                return gr.update(), gr.update(), acting_on
            shown = about_now(run_id, acting_on, query_, order_)[:2]
            return shown[0], shown[1], (None if watch.done else acting_on)  # then it stops

        runs_timer.tick(about_tick, [chosen, acting, query, order], [about, browsed, acting])
        browsed.select(picked, [chosen, query, order], [settings])
        query.change(browse, [chosen, query, order], [browsed])
        order.change(browse, [chosen, query, order], [browsed])
        again_button.click(again, [chosen], [prompts, negative, model, width, height, steps,
                                              guidance, seed, num_images, scheduler, loras,
                                              sweeps, picture, strength, status, tabs])
        left.change(lambda r: service.pictures(r) if r else [], [left], [left_pictures])
        right.change(lambda r: service.pictures(r) if r else [], [right], [right_pictures])
    return page


def _int(value):
    return None if value is None or value == "" else int(value)


def _number(text, field: str, kind):
    """A field left empty: None (the model's default); else its number, or one sentence."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SpecError(f"{field} {text[:20]!r} is not {what}.") from None


def serve(host: str, port: int, auth: tuple[str, str] | None, open_browser: bool,
          listening=None) -> None:
    """Serve the page until interrupted; ``listening()`` once it listens."""
    from . import service

    os.environ.setdefault("GRADIO_TEMP_DIR", str(service.uploads_dir().parent / "gradio"))
    page = build()
    page.queue(default_concurrency_limit=4)
    try:
        page.launch(server_name=host, server_port=port, auth=auth, inbrowser=open_browser,
                    share=False, show_error=False, quiet=True, prevent_thread_lock=True,
                    max_file_size=f"{service.MAX_UPLOAD_BYTES >> 20}mb",
                    # the page serves the uploads and the runs' pictures linked by content
                    allowed_paths=[str(service.uploads_dir()), str(service.shown_dir())])
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise SpecError(f"The app cannot listen on {host}:{port} ({str(exc).split('.')[0]}); "
                        "choose another --port or --host.") from None
    if listening is not None:
        listening()
    try:
        page.block_thread()
    finally:
        page.close()
