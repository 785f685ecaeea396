"""Which hosts get a Hugging Face token, where it comes from, and which page a gated model's licence is on."""
import pytest

from workers.installer.hub import auth_headers, hub_token, is_hub, model_page


@pytest.mark.parametrize("url", ["https://huggingface.co/a/b/resolve/main/x", "https://hf.co/a/b",
                                 "https://cdn-lfs.huggingface.co/repos/x", "https://cas-bridge.xethub.hf.co/x",
                                 "https://HuggingFace.co./a"])
def test_hugging_face_hosts_are_its_domains_and_their_subdomains(url):
    assert is_hub(url) and auth_headers(url, "hf_x") == {"Authorization": "Bearer hf_x"}


@pytest.mark.parametrize("url", ["https://evilhuggingface.co/a", "https://huggingface.co.evil.net/a",
                                 "https://example.com/huggingface.co/a", "https://hf.com/a",
                                 "https://user@evil.net/?huggingface.co", "file:///huggingface.co"])
def test_look_alike_hosts_get_no_token(url):
    assert not is_hub(url) and auth_headers(url, "hf_x") == {}


def test_no_token_means_no_header_even_for_hugging_face():
    assert auth_headers("https://huggingface.co/a/b/resolve/main/x", "") == {}


def test_the_token_comes_from_hf_token_then_hugging_face_hub_token():
    assert hub_token({"HF_TOKEN": " hf_new\n", "HUGGING_FACE_HUB_TOKEN": "hf_old"}) == "hf_new"
    assert hub_token({"HF_TOKEN": "  ", "HUGGING_FACE_HUB_TOKEN": "hf_old"}) == "hf_old"
    assert hub_token({}) == ""


@pytest.mark.parametrize("url, page", [
    ("https://huggingface.co/acme/model/resolve/main/x.safetensors", "https://huggingface.co/acme/model"),
    ("https://huggingface.co/datasets/acme/set/resolve/v1/a/b.bin", "https://huggingface.co/datasets/acme/set"),
    ("https://huggingface.co/acme/model/blob/main/x.safetensors", ""),
    ("https://example.com/acme/model/resolve/main/x", ""),
])
def test_the_model_page_is_derived_from_a_resolve_url(url, page):
    assert model_page(url) == page
