/* A Kafka-protocol cluster for benchmarks: librdkafka's in-process mock cluster, owned by this
 * small process, with the world's topic made up front (the mock cluster answers no CreateTopics).
 * Unlike noida-db it honours a fetch's max wait, so an idle consumer costs nothing and write
 * benchmarks measure Pylon rather than the broker (see BENCHMARKS.md). In memory only.
 *   mock-kafka TOPIC PARTITIONS [deny-create-topics]
 *     -> prints the bootstrap address, then serves until killed. With deny-create-topics every
 *        CreateTopics request is refused as Kafka refuses a user without the right to create
 *        topics (TOPIC_AUTHORIZATION_FAILED): a least-privilege broker, for tests. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The mock cluster's brokers leave Nagle's algorithm on for the connections they accept: a
 * response written while the previous one is unacknowledged waits for the client's delayed ACK
 * (40 ms), so a producer with several requests in flight sees 44 ms stalls a real broker never
 * shows. This executable's accept() takes the place of libc's for librdkafka (the dynamic linker
 * binds the library's call to the executable's symbol) and turns Nagle off on each connection. */
int accept(int socket, struct sockaddr *address, socklen_t *length) {
    static int (*real_accept)(int, struct sockaddr *, socklen_t *);
    if (!real_accept) real_accept = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int connection = real_accept(socket, address, length);
    if (connection >= 0) {
        int on = 1;
        setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    return connection;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "deny-create-topics") != 0)) {
        fprintf(stderr, "usage: %s TOPIC PARTITIONS [deny-create-topics]\n", argv[0]);
        return 2;
    }
    char error[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
    if (!owner) {
        fprintf(stderr, "mock-kafka: %s\n", error);
        return 1;
    }
    rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(owner, 1);
    if (!cluster || rd_kafka_mock_topic_create(cluster, argv[1], atoi(argv[2]), 1) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "mock-kafka: cannot create the cluster or its topic\n");
        return 1;
    }
    if (argc == 4) {
        enum { refusals = 100000 };  /* the mock takes errors one request at a time */
        static rd_kafka_resp_err_t errors[refusals];
        for (int i = 0; i < refusals; i++) errors[i] = RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
        rd_kafka_mock_push_request_errors_array(cluster, 19 /* CreateTopics */, refusals, errors);
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(cluster));
    fflush(stdout);
    for (;;) pause();
}
