from django.urls import path

from . import views

urlpatterns = [
    path("", views.job_list, name="job-list"),
    path("jobs/rows/", views.job_rows, name="job-rows"),
    path("submit/", views.job_submit, name="job-submit"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:job_id>/live/", views.job_live, name="job-live"),
    path("jobs/<uuid:job_id>/preview/", views.job_preview, name="job-preview"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<uuid:job_id>/retry/", views.job_retry, name="job-retry"),
    path("outputs/<int:output_id>/", views.output_file, name="output-file"),
    path("backends/", views.backend_selector, name="backends"),
    path("gallery/", views.gallery, name="gallery"),
    path("account/tokens/", views.api_tokens, name="api-tokens"),
    path("backends/cards/", views.backend_cards, name="backend-cards"),
    path("backends/preference/", views.preference_save, name="preference-save"),
]
