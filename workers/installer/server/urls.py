from django.urls import path

from . import views

# Included under "install/" by project/urls.py.
urlpatterns = [
    path("", views.install_page, name="install"),
    path("start/", views.install_start, name="install-start"),
    path("runs/<int:run_id>/live/", views.install_live, name="install-live"),
    path("runs/<int:run_id>/pause/", views.install_pause, name="install-pause"),
    path("runs/<int:run_id>/resume/", views.install_resume, name="install-resume"),
    path("runs/<int:run_id>/cancel/", views.install_cancel, name="install-cancel"),
]
