/* Send one mail over SMTP in plaintext: smtp_client_plain HOST PORT.  Its twin
 * smtp_starttls_client_ssa.c asks for STARTTLS and upgrades this very socket. */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Send `line` (unless NULL) and read the reply up to its last line; exit unless it is `code`. */
static void step(int fd, const char *line, const char *code)
{
    char reply[4096];
    size_t have = 0;
    if (line != NULL && write(fd, line, strlen(line)) != (ssize_t)strlen(line))
        exit(1);
    for (;;) {
        ssize_t n = read(fd, reply + have, sizeof reply - 1 - have);
        if (n <= 0)
            exit(1);
        reply[have += (size_t)n] = '\0';
        char *last = reply, *nl;
        while ((nl = strstr(last, "\r\n")) != NULL && nl[2] != '\0')
            last = nl + 2;
        if (strstr(last, "\r\n") != NULL && last[3] == ' ')
            break;
        if (have == sizeof reply - 1)
            exit(1);
    }
    if (strncmp(reply, code, 3) != 0) {
        fprintf(stderr, "unexpected reply: %s", reply);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0)
        return 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        perror("connect");
        return 1;
    }
    step(fd, NULL, "220");
    step(fd, "EHLO client.test\r\n", "250");
    step(fd, "MAIL FROM:<a@client.test>\r\n", "250");
    step(fd, "RCPT TO:<b@server.test>\r\n", "250");
    step(fd, "DATA\r\n", "354");
    step(fd, "Subject: hello\r\n\r\nsent over STARTTLS\r\n.\r\n", "250");
    step(fd, "QUIT\r\n", "221");
    printf("sent\n");
    close(fd);
    return 0;
}
