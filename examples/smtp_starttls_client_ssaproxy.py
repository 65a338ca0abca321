"""Send one message over SMTP with STARTTLS; the ssaproxy daemon upgrades the connection in
place, under the admin's policy: `python3 smtp_starttls_client_ssaproxy.py HOST PORT`."""

import smtplib
import sys

import ssaproxy

host, port = sys.argv[1], int(sys.argv[2])
smtp = smtplib.SMTP(host, port, timeout=30)
smtp.ehlo()
smtp.starttls(context=ssaproxy.Context())
smtp.ehlo()
smtp.sendmail("me@example.test", ["you@example.test"], "Subject: hello\r\n\r\nsent over STARTTLS\r\n")
smtp.quit()
print("sent", flush=True)
