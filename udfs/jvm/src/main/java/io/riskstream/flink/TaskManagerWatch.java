package io.riskstream.flink;

import java.lang.reflect.Field;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.core.execution.JobClient;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.runtime.taskexecutor.TaskExecutor;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Keeps a local MiniCluster's TaskManagers alive while its job runs: a TaskManager that stopped (a fatal
 * error in a task) is replaced, so the job's restart finds its slots again, as a standalone cluster under a
 * supervisor or a Kubernetes deployment replaces a TaskManager process that exited.
 *
 * <p>Why: PyFlink's process-mode operators flush a bundle on a helper thread while the task thread waits;
 * a cancellation (any failover) interrupts the wait, and the operator's close then races Beam's bundle
 * release on that helper thread ({@code DefaultJobBundleFactory.close}: "Reference count must not be
 * negative"). The exception comes from the task's exception handler, which Flink treats as FATAL: the
 * TaskManager stops. A MiniCluster never starts another one by itself, and the restarted job would wait for
 * slots forever. Nothing is lost meanwhile (the sinks' transactions stay uncommitted until a checkpoint).
 *
 * <p>Pitfall: the MiniCluster is reached by reflection ({@code MiniClusterJobClient.miniCluster},
 * {@code MiniCluster.taskManagers} and its lock); against a client of a remote cluster {@link #start}
 * returns false and nothing runs.
 */
public final class TaskManagerWatch implements Runnable {
    private static final Logger LOG = LoggerFactory.getLogger(TaskManagerWatch.class);

    private final JobClient client;
    private final MiniCluster cluster;
    private final long periodMs;
    private final int expected;
    private volatile int replaced;

    private TaskManagerWatch(JobClient client, MiniCluster cluster, long periodMs, int expected) {
        this.client = client;
        this.cluster = cluster;
        this.periodMs = periodMs;
        this.expected = expected;
    }

    /** The MiniCluster behind a local job's client, or null (a remote cluster's client). */
    public static MiniCluster miniCluster(JobClient client) {
        for (Class<?> c = client.getClass(); c != null; c = c.getSuperclass()) {
            for (Field f : c.getDeclaredFields()) {
                if (MiniCluster.class.isAssignableFrom(f.getType())) {
                    try {
                        f.setAccessible(true);
                        return (MiniCluster) f.get(client);
                    } catch (ReflectiveOperationException | RuntimeException e) {
                        LOG.warn("cannot reach the MiniCluster of {}: {}", client.getClass().getName(), e.toString());
                        return null;
                    }
                }
            }
        }
        return null;
    }

    /**
     * Starts watching the job's MiniCluster every {@code periodMs} on a daemon thread, until the job reached
     * a terminal state or the cluster stopped. Returns the watch, or null without a MiniCluster.
     */
    public static TaskManagerWatch start(JobClient client, long periodMs) {
        MiniCluster cluster = miniCluster(client);
        if (cluster == null) {
            return null;
        }
        int alive = alive(cluster);
        if (alive <= 0) {
            return null;
        }
        TaskManagerWatch watch = new TaskManagerWatch(client, cluster, periodMs, alive);
        Thread t = new Thread(watch, "riskstream-taskmanager-watch");
        t.setDaemon(true);
        t.start();
        return watch;
    }

    /** TaskManagers started in place of stopped ones so far. */
    public int replaced() {
        return replaced;
    }

    /** TaskManagers of the cluster that have not stopped; -1 when they cannot be read. */
    public static int alive(MiniCluster cluster) {
        try {
            Object lock = field(cluster, "lock");
            List<TaskExecutor> tms;
            synchronized (lock) {
                @SuppressWarnings("unchecked")
                List<TaskExecutor> all = (List<TaskExecutor>) field(cluster, "taskManagers");
                tms = new ArrayList<>(all);
            }
            int n = 0;
            for (TaskExecutor tm : tms) {
                if (!tm.getTerminationFuture().isDone()) {
                    n++;
                }
            }
            return n;
        } catch (ReflectiveOperationException | RuntimeException e) {
            LOG.warn("cannot read the MiniCluster's TaskManagers: {}", e.toString());
            return -1;
        }
    }

    private static Object field(Object o, String name) throws ReflectiveOperationException {
        Field f = o.getClass().getDeclaredField(name);
        f.setAccessible(true);
        return f.get(o);
    }

    private boolean jobEnded() {
        try {
            return client.getJobStatus().get().isGloballyTerminalState();
        } catch (Exception e) {
            return true; // the cluster no longer knows the job: it is over
        }
    }

    @Override
    public void run() {
        try {
            while (cluster.isRunning() && !jobEnded()) {
                Thread.sleep(periodMs);
                int alive = alive(cluster);
                if (alive < 0) {
                    return;
                }
                if (alive >= expected || !cluster.isRunning() || jobEnded()) {
                    continue; // a cluster shutting down after its job stops its TaskManagers too
                }
                for (int i = alive; i < expected; i++) {
                    String msg = "a TaskManager of the local MiniCluster stopped (see the Flink log: FATAL); "
                            + "starting another one so the job's restart gets its slots";
                    LOG.warn(msg);
                    System.err.println("[run] WARNING " + msg);
                    cluster.startTaskManager();
                    replaced++;
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (Exception e) {
            LOG.warn("the TaskManager watch stopped: {}", e.toString());
        }
    }
}
