"""Send one message over SMTP with STARTTLS, doing TLS with Python's ssl module:
`python3 smtp_starttls_client_ssl.py HOST PORT`."""

import smtplib
import ssl
import sys

host, port = sys.argv[1], int(sys.argv[2])
smtp = smtplib.SMTP(host, port, timeout=30)
smtp.ehlo()
smtp.starttls(context=ssl.create_default_context())
smtp.ehlo()
smtp.sendmail("me@example.test", ["you@example.test"], "Subject: hello\r\n\r\nsent over STARTTLS\r\n")
smtp.quit()
print("sent", flush=True)
