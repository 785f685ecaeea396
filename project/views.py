"""Site-wide views: liveness, and friendly error pages (never a traceback to a user)."""
from django.http import JsonResponse
from django.shortcuts import render


def healthz(request):
    return JsonResponse({"ok": True})


def not_found(request, exception=None):
    return render(request, "404.html", status=404)


def server_error(request):
    return render(request, "500.html", status=500)
