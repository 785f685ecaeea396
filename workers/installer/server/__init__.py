"""The installer's side in the Django server: the InstallRun row (models), its services and
reads, the Local GPU page (views, urls), the admin, the Celery task that runs an install on the
GPU machine, and the adapter between that row and the pure installer in workers/installer/
(which runs without Django). The workers app loads the models and admin from here.
"""
