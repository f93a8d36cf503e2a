/* A Kafka-protocol cluster for benchmarks: librdkafka's in-process mock cluster, owned by this
 * small process, with the world's topic made up front (the mock cluster answers no CreateTopics).
 * Unlike noida-db it honours a fetch's max wait, so an idle consumer costs nothing and write
 * benchmarks measure Pylon rather than the broker (see BENCHMARKS.md). In memory only.
 *   mock-kafka TOPIC PARTITIONS   -> prints the bootstrap address, then serves until killed */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s TOPIC PARTITIONS\n", argv[0]);
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
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(cluster));
    fflush(stdout);
    for (;;) pause();
}
