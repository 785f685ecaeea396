"""Create the first admin account if there is none, and say how to sign in.

The generated password is kept in var/initial-admin-password (mode 600) so that every
`make run` can repeat how to sign in, until the admin changes it and deletes the file.
"""
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the first admin account if none exists and print how to sign in."

    def handle(self, *args, **options):
        users = get_user_model()
        password_file = settings.VAR_DIR / "initial-admin-password"
        if not users.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            users.objects.create_superuser("admin", "", password)
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            self.stdout.write("==> created the first admin account")
        if password_file.is_file():
            self.stdout.write(
                f"==> sign in as 'admin' with the password in {password_file} "
                "(change it in the admin, then delete that file)"
            )
