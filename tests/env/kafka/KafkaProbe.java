// Readiness and credential check for the test Kafka broker, using the Kafka Java admin client
// from the same jars as the broker (the kafka-tools jar is not published for every release).
// tests/env/kafka.sh compiles it once into the cache and runs:
//   KafkaProbe PLAINTEXT_BOOTSTRAP SASL_BOOTSTRAP USER PASSWORD TIMEOUT_SECONDS
// Exit 0 only if: the plaintext listener answers DescribeCluster/ListTopics (waiting up to the
// timeout), SCRAM-SHA-512 and SCRAM-SHA-256 logins with USER/PASSWORD work, and a wrong password
// is rejected with an authentication error.
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.errors.AuthenticationException;

public class KafkaProbe {
    static Properties props(String bootstrap, String mechanism, String user, String password) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("request.timeout.ms", "3000");
        p.put("default.api.timeout.ms", "5000");
        p.put("reconnect.backoff.max.ms", "200");
        if (mechanism != null) {
            p.put("security.protocol", "SASL_PLAINTEXT");
            p.put("sasl.mechanism", mechanism);
            p.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required"
                    + " username=\"" + user + "\" password=\"" + password + "\";");
        }
        return p;
    }

    // One admin round trip: the broker must list itself and answer ListTopics.
    static void call(Properties p) throws Exception {
        try (Admin admin = Admin.create(p)) {
            if (admin.describeCluster().nodes().get(5, TimeUnit.SECONDS).isEmpty()) {
                throw new IllegalStateException("no brokers in metadata yet");
            }
            admin.listTopics().names().get(5, TimeUnit.SECONDS);
        }
    }

    public static void main(String[] a) throws Exception {
        String plain = a[0], sasl = a[1], user = a[2], password = a[3];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(a[4]));
        while (true) {
            try {
                call(props(plain, null, null, null));
                break;
            } catch (Exception e) {
                if (System.nanoTime() > deadline) {
                    System.err.println("kafka not ready on " + plain + ": " + e);
                    System.exit(1);
                }
                Thread.sleep(300);
            }
        }
        for (String mechanism : new String[] {"SCRAM-SHA-512", "SCRAM-SHA-256"}) {
            try {
                call(props(sasl, mechanism, user, password));
            } catch (Exception e) {
                System.err.println(mechanism + " login as " + user + " failed on " + sasl + ": " + e);
                System.exit(1);
            }
            try {
                call(props(sasl, mechanism, user, password + "-wrong"));
                System.err.println(mechanism + " login with a wrong password was accepted");
                System.exit(1);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof AuthenticationException)) {
                    System.err.println(mechanism + " wrong password: unexpected error " + e);
                    System.exit(1);
                }
            }
        }
        System.out.println("kafka ready: " + plain + ", SCRAM on " + sasl);
    }
}
