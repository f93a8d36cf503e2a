// librdkafka, as Debian's librdkafka-dev installs it. Pylon uses only its non-variadic entry points.
#include <librdkafka/rdkafka.h>
