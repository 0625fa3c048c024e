"""The real Python Spring Cloud Config client (`config-client` from PyPI) against our
config server, and Spring's symmetric cipher format made independently with the
`cryptography` package.

    python spring_config_client.py encrypt KEY PLAINTEXT   # prints Spring-format hex
    python spring_config_client.py check URL KEY           # the client checks

`check` expects the repository that crates/rtalpha/tests/config_clients.rs commits:
application `foo`, profile `dev`, label `main`. Exits non-zero with a message on any
failure.
"""
import os
import sys

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

SALT = "deadbeef"


def key_of(password):
    kdf = PBKDF2HMAC(algorithm=hashes.SHA1(), length=32, salt=bytes.fromhex(SALT), iterations=1024)
    return kdf.derive(password.encode("utf-8"))


def encrypt(plain, password):
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    data = padder.update(plain.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key_of(password)), modes.CBC(iv)).encryptor()
    return (iv + encryptor.update(data) + encryptor.finalize()).hex()


def decrypt(text, password):
    raw = bytes.fromhex(text.strip())
    decryptor = Cipher(algorithms.AES(key_of(password)), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")


def expect(what, actual, wanted):
    if actual != wanted:
        sys.exit(f"FAIL {what}: got {actual!r}, wanted {wanted!r}")
    print(f"ok {what}")


def check(url, password):
    from config import ConfigClient

    client = ConfigClient(address=url, app_name="foo", profile="dev", label="main", fail_fast=True)
    client.get_config()
    expect("greeting (profile file wins)", client.get("greeting"), "hello from foo-dev")
    expect("server.port (YAML number)", client.get("server.port"), 9000)
    expect("list rebuilt from list[0], list[1]", client.get("list"), ["a", "b"])
    expect("{cipher} value made by Python, decrypted by the server", client.get("secret"), "made-in-python")
    expect("plain file with placeholders", client.get_file("nginx.conf"), "listen 9000;\n")

    ours = client.encrypt("made-by-rtalpha")
    expect("the server's /encrypt read by Python", decrypt(ours, password), "made-by-rtalpha")
    theirs = encrypt("made-by-python", password)
    expect("Python's ciphertext through the server's /decrypt", client.decrypt(theirs), "made-by-python")
    print("all checks passed")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "encrypt":
        print(encrypt(sys.argv[3], sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
