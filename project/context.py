from django.conf import settings


def links(request):
    """Links the admin index shows (Flower, metrics); no secrets, only public URLs."""
    return {"flower_url": settings.FLOWER_URL, "metrics_url": "/admin/metrics/"}
