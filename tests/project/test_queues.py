"""Each local GPU's ComfyUI has its own queue, named in one place (project/queues.py); the other
backends share their category's."""
from project import queues
from routing.models import Backend


def test_each_local_comfyui_has_its_own_queue_and_the_first_keeps_local():
    def queue(name, kind="comfyui", category="local"):
        return Backend(name=name, kind=kind, category=category).queue

    assert queue("local") == queues.LOCAL == "local"  # the first machine: as before fleets
    assert (queue("box-b"), queue("local-gpu1")) == ("local.box-b", "local.local-gpu1")
    assert queue("spare", category="cloud") == queues.CLOUD  # a ComfyUI server reached from anywhere
    assert (queue("pods", kind="pod", category="cloud"), queue("gemini", kind="gemini", category="gemini")) == (
        queues.CLOUD, queues.GEMINI)
