"""The submit form: every bad input becomes a field error and no job is created."""
import json

from django import forms
from django.conf import settings

from workers.workflows import WorkflowError, validate_workflow

from .models import JobKind, PreferenceChoice, Priority
from .selectors import unavailable_preferences

MAX_SIDE = 4096
MAX_VIDEO_SECONDS = 30

ERR_BOTH = "Write a prompt or give a workflow, not both."
ERR_NEITHER = "Write a prompt, or paste or upload a ComfyUI workflow."
ERR_TOO_BIG = "The workflow is {size} KB; at most {limit} KB is allowed."
ERR_BAD_JSON = "The workflow is not valid JSON: {error}."
ERR_MULTIPLE_OF_8 = "Must be a multiple of 8 (ComfyUI works on 8×8 latent blocks)."
ERR_NOT_UTF8 = "The workflow file is not a UTF-8 text file."
ERR_NOT_TEXT = "{where} contains {what}, which is not text; remove it."


def text_problem(value: str) -> str:
    """What in a string no database stores as text ("" when nothing): PostgreSQL refuses NUL in
    text and jsonb, and no UTF-8 column takes a lone surrogate (JSON may spell both)."""
    if "\x00" in value:
        return "a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate (such as \\ud800)"
    return ""


def _only_text(value: str) -> None:
    problem = text_problem(value)
    if problem:
        raise forms.ValidationError(ERR_NOT_TEXT.format(where="The text", what=problem))


def _workflow_text_problem(workflow) -> str:
    """The first string (key or value) of a parsed workflow that is not text, named by its node."""
    def walk(value):
        if isinstance(value, str):
            return text_problem(value)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            problem = (isinstance(key, str) and text_problem(key)) or walk(item)
            if problem:
                return problem
        return ""

    for node_id, node in (workflow.items() if isinstance(workflow, dict) else ()):
        problem = text_problem(node_id) or walk(node)
        if problem:
            return ERR_NOT_TEXT.format(where=f"Node {node_id}" if not text_problem(node_id) else "A node id",
                                       what=problem)
    return ""


class JobForm(forms.Form):
    kind = forms.ChoiceField(choices=JobKind.choices, initial=JobKind.IMAGE, widget=forms.RadioSelect)
    preference = forms.ChoiceField(choices=PreferenceChoice.choices, initial=PreferenceChoice.AUTO,
                                   widget=forms.RadioSelect, label="Where to run")
    prompt = forms.CharField(required=False, max_length=4000, validators=[_only_text], widget=forms.Textarea(
        attrs={"rows": 3, "placeholder": "a lighthouse at dusk, oil painting"}))
    negative_prompt = forms.CharField(required=False, max_length=4000, validators=[_only_text],
                                      widget=forms.Textarea(attrs={"rows": 2}))
    width = forms.IntegerField(min_value=64, max_value=MAX_SIDE, initial=512, required=False,
                               help_text="A workflow sets its own size")
    height = forms.IntegerField(min_value=64, max_value=MAX_SIDE, initial=512, required=False)
    seed = forms.IntegerField(required=False, min_value=0, max_value=2**63 - 1, help_text="Empty: random")
    duration_seconds = forms.IntegerField(required=False, min_value=1, max_value=MAX_VIDEO_SECONDS,
                                          initial=4, label="Video length (s)")
    priority = forms.TypedChoiceField(choices=Priority.choices, coerce=int, initial=Priority.NORMAL,
                                      required=False, empty_value=Priority.NORMAL)
    workflow = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}),
                               label="ComfyUI workflow (API format JSON)")
    workflow_file = forms.FileField(required=False, label="…or upload a workflow file")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # No maxlength in the page: the browser would cut a long paste mid-word and send it.
        # The server refuses it instead, saying how long it is.
        for name in ("prompt", "negative_prompt"):
            self.fields[name].widget.attrs.pop("maxlength", None)
            self.fields[name].error_messages["max_length"] = (
                "At most %(limit_value)d characters; this one has %(show_value)d. Shorten it and submit again.")

    def clean_width(self):
        return _multiple_of_8(self.cleaned_data["width"])

    def clean_height(self):
        return _multiple_of_8(self.cleaned_data["height"])

    def _size_of(self, data, workflow) -> None:
        """A prompt job: the size asked for (512 when left empty). A workflow: the size it makes,
        read from its latent or image source node; 0×0 when it does not say (the page says so)."""
        if workflow is None:
            data["width"] = data.get("width") or 512
            data["height"] = data.get("height") or 512
            return
        data["width"], data["height"] = workflow_size(workflow)

    def clean(self):
        data = super().clean()
        refused = unavailable_preferences().get(data.get("preference") or "")
        if refused:
            self.add_error("preference", refused)
        text = self._workflow_text(data)
        prompt = (data.get("prompt") or "").strip()
        if text and prompt:
            raise forms.ValidationError(ERR_BOTH)
        if not text and not prompt:
            if "prompt" not in self.errors:  # a prompt refused (too long…) has said why already
                self.add_error("prompt", ERR_NEITHER)
            return data
        data["prompt"] = prompt
        data["workflow"] = self._parse_workflow(text) if text else None
        self._size_of(data, data["workflow"])
        if data.get("kind") == JobKind.VIDEO and not data.get("duration_seconds"):
            data["duration_seconds"] = 4
        if data.get("kind") != JobKind.VIDEO:
            data["duration_seconds"] = 0
        return data

    def _workflow_text(self, data) -> str:
        upload = data.get("workflow_file")
        if upload:
            if upload.size > settings.WORKFLOW_MAX_BYTES:
                self.add_error("workflow_file", ERR_TOO_BIG.format(size=upload.size // 1024,
                                                                   limit=settings.WORKFLOW_MAX_BYTES // 1024))
                return ""
            try:
                return upload.read().decode("utf-8").strip()
            except UnicodeDecodeError:
                self.add_error("workflow_file", ERR_NOT_UTF8)
                return ""
        return (data.get("workflow") or "").strip()

    def _parse_workflow(self, text: str):
        field = "workflow_file" if self.cleaned_data.get("workflow_file") else "workflow"
        if len(text.encode()) > settings.WORKFLOW_MAX_BYTES:
            self.add_error(field, ERR_TOO_BIG.format(size=len(text.encode()) // 1024,
                                                     limit=settings.WORKFLOW_MAX_BYTES // 1024))
            return None
        try:
            workflow = json.loads(text)
        except json.JSONDecodeError as error:
            self.add_error(field, ERR_BAD_JSON.format(error=f"{error.msg} at line {error.lineno}, column {error.colno}"))
            return None
        except RecursionError:
            self.add_error(field, ERR_BAD_JSON.format(error="it is nested too deeply"))
            return None
        try:
            problem = _workflow_text_problem(workflow)
        except RecursionError:
            problem = ERR_BAD_JSON.format(error="it is nested too deeply")
        if problem:
            self.add_error(field, problem)
            return None
        try:
            validate_workflow(workflow, max_nodes=settings.WORKFLOW_MAX_NODES,
                              allowed_classes=settings.WORKFLOW_ALLOWED_CLASSES)
        except WorkflowError as error:
            self.add_error(field, str(error))
            return None
        return workflow


SIZE_NODES = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "EmptyMochiLatentVideo",
              "EmptyLTXVLatentVideo", "EmptyCosmosLatentVideo", "EmptyImage", "EmptyFluxLatentImage")


def workflow_size(workflow) -> tuple[int, int]:
    """(width, height) from the workflow's first empty-latent or empty-image node with literal
    sizes; (0, 0) when none says (a LoadImage workflow, sizes from links)."""
    for node_id in sorted(workflow or {}, key=lambda n: (len(str(n)), str(n))):
        node = workflow[node_id]
        inputs = node.get("inputs") or {} if isinstance(node, dict) else {}
        if isinstance(node, dict) and node.get("class_type") in SIZE_NODES:
            width, height = inputs.get("width"), inputs.get("height")
            if isinstance(width, int) and isinstance(height, int) and 0 < width <= 16384 and 0 < height <= 16384:
                return width, height
    return 0, 0


def _multiple_of_8(value) -> int:
    if value is None:
        return value
    if value % 8:
        raise forms.ValidationError(ERR_MULTIPLE_OF_8)
    return value
