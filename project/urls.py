from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from billing import views as billing_views

from . import views

admin.site.site_header = "Comfy Hybrid admin"
admin.site.index_template = "admin/comfy_index.html"

urlpatterns = [
    path("admin/metrics/", billing_views.dashboard, name="metrics"),
    path("admin/", admin.site.urls),
    path("costs/", billing_views.cost_monitor, name="costs"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    path("install/", include("workers.installer.server.urls")),
    path("api/", include("routing.api.urls")),
    path("", include("routing.urls")),
]

handler404 = "project.views.not_found"
handler500 = "project.views.server_error"
