package io.riskstream.flink;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/**
 * Runs a State Processor API job in this JVM and fails it when one of its bootstrap tasks can no longer
 * finish. Each keyed bootstrap subtask (BootstrapStreamTaskRunner) hands its records through a queue of 16
 * to an inner task on its own thread ({@code <operator>-bootstrap-thread-<subtask>}); when that inner task
 * fails (any exception: the key context, state, timers, the function), Flink 2.2 cleans it up and ends the
 * thread without reporting the error, and the subtask blocks forever on the full queue: the job neither
 * finishes nor fails, and nothing is logged.
 *
 * <p>The watch polls this JVM's threads: a subtask thread inside BootstrapStreamTaskRunner.processElement
 * always has its inner thread alive (the inner thread ends only after the end-of-data marker, which
 * endInput puts after the last record), so fewer live inner threads than subtask threads in processElement,
 * on two polls in a row, is a dead inner task: the job is cancelled and this fails. A failure after the
 * subtask's last record does not block it (endInput's join returns): {@link Bootstrap#checkKeyGroups} finds
 * the missing key groups in the savepoint.
 */
public final class BootstrapWatch {
    static final String RUNNER = "org.apache.flink.state.api.output.BootstrapStreamTaskRunner";
    static final String INNER = "-bootstrap-thread-";
    static final String HINT = "Flink drops the error; to see it, run with JVM_ARGS=-XX:StartFlightRecording="
        + "settings=<a .jfc with jdk.JavaExceptionThrow enabled>,filename=boot.jfr and read the exceptions of the "
        + "'-bootstrap-thread-' threads with `jfr print --events jdk.JavaExceptionThrow boot.jfr`";
    static final long POLL_MS = 500;

    private BootstrapWatch() {}

    /** Runs the job; throws when it fails or when a bootstrap task died (the job is then cancelled). */
    public static JobExecutionResult run(StreamExecutionEnvironment env, String jobName) throws Exception {
        JobClient client = env.executeAsync(jobName);
        CompletableFuture<JobExecutionResult> result = client.getJobExecutionResult();
        int strikes = 0;
        java.util.Set<String> seen = new java.util.HashSet<>();
        while (true) {
            try {
                return result.get(POLL_MS, TimeUnit.MILLISECONDS);
            } catch (TimeoutException e) {
                // still running
            } catch (ExecutionException e) {
                throw e.getCause() instanceof Exception ? (Exception) e.getCause() : e;
            }
            List<String> stuck = deadInnerTasks(Thread.getAllStackTraces(), seen);
            strikes = stuck.isEmpty() ? 0 : strikes + 1;
            if (strikes >= 2) {
                try {
                    client.cancel().get(60, TimeUnit.SECONDS);
                } catch (Exception ignored) {
                    // the message below is what matters; a cancel that fails leaves a local job behind
                }
                throw new IllegalStateException("the bootstrap job cannot finish: " + (stuck.size() == 1
                    ? "its task " + stuck.get(0) + " waits" : "one of its tasks " + stuck + " waits")
                    + " for an inner State Processor API task that has died; the job was cancelled (" + HINT + ")");
            }
        }
    }

    /**
     * The bootstrap subtasks blocked on a dead inner task: the subtask threads inside
     * BootstrapStreamTaskRunner.processElement when fewer inner threads are alive than there are such
     * threads, or one whose own inner thread ({@code <task name>-bootstrap-thread-<subtask index>}, as
     * Flink 2.2 names them) was seen in {@code seen} by an earlier poll and is gone (empty when none is).
     */
    static List<String> deadInnerTasks(Map<Thread, StackTraceElement[]> threads, java.util.Set<String> seen) {
        List<String> feeding = new ArrayList<>();
        java.util.Set<String> alive = new java.util.HashSet<>();
        for (Map.Entry<Thread, StackTraceElement[]> t : threads.entrySet()) {
            if (t.getKey().getName().contains(INNER) && t.getKey().isAlive()) {
                alive.add(t.getKey().getName());
                continue;
            }
            for (StackTraceElement f : t.getValue()) {
                if (f.getClassName().equals(RUNNER) && f.getMethodName().equals("processElement")) {
                    feeding.add(t.getKey().getName());
                    break;
                }
            }
        }
        List<String> orphans = new ArrayList<>();
        for (String task : feeding) {
            String own = innerName(task);
            if (own != null && seen.contains(own) && !alive.contains(own)) {
                orphans.add(task);
            }
        }
        seen.addAll(alive);
        // by name when the dead one's name is known; else all that feed (one of them has lost its inner task)
        return !orphans.isEmpty() ? orphans : alive.size() < feeding.size() ? feeding : List.of();
    }

    /** "name (k/n)#attempt" -> "name-bootstrap-thread-(k-1)"; null for another form. */
    static String innerName(String taskThread) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("^(.*) \\((\\d+)/\\d+\\)(#\\d+)?$")
            .matcher(taskThread);
        return m.matches() ? m.group(1) + INNER + (Integer.parseInt(m.group(2)) - 1) : null;
    }
}
