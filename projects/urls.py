from __future__ import annotations

from django.urls import path

from projects import views

urlpatterns = [
    path("", views.index, name="index"),
    path("projects/<slug:slug>/", views.project_detail, name="project-detail"),
]
