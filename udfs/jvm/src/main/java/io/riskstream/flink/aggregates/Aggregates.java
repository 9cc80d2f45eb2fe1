package io.riskstream.flink.aggregates;

import java.util.Map;

/** Loads the aggregate classes the spec document names. */
public final class Aggregates {
    public static final String PACKAGE = "io.riskstream.flink.aggregates.";

    private Aggregates() {}

    /**
     * A new instance of {@code io.riskstream.flink.aggregates.<className>}, configured with {@code params};
     * refused (IllegalArgumentException naming what to fix) when the class is missing, is not an Aggregate,
     * or declares another family or field use than the spec ({@code accumulator}, {@code takesField}).
     */
    public static Aggregate load(String name, String className, String accumulator, boolean takesField,
                                 Map<String, Object> params) {
        if (className == null || !className.matches("[A-Za-z_$][A-Za-z0-9_$]*")) {
            throw new IllegalArgumentException("aggregate " + name + ": class name " + className);
        }
        Class<?> c;
        try {
            c = Class.forName(PACKAGE + className, true, Aggregates.class.getClassLoader());
        } catch (ClassNotFoundException e) {
            ClassLoader ctx = Thread.currentThread().getContextClassLoader();
            try {
                c = Class.forName(PACKAGE + className, true, ctx);
            } catch (ClassNotFoundException | RuntimeException e2) {
                throw new IllegalArgumentException("aggregate " + name + ": no class " + PACKAGE + className
                    + " in the JVM module (write its JVM twin next to udfs/aggregates.py's and rebuild the jar:"
                    + " riskstream jars)", e);
            }
        }
        if (!Aggregate.class.isAssignableFrom(c)) {
            throw new IllegalArgumentException("aggregate " + name + ": " + c.getName() + " is not an Aggregate");
        }
        Aggregate a;
        try {
            a = (Aggregate) c.getDeclaredConstructor().newInstance();
        } catch (ReflectiveOperationException e) {
            throw new IllegalArgumentException("aggregate " + name + ": " + c.getName()
                + " needs a public no-argument constructor", e);
        }
        if (!a.accumulator().equals(accumulator) || a.takesField() != takesField) {
            throw new IllegalArgumentException("aggregate " + name + ": the JVM class " + c.getName()
                + " (accumulator " + a.accumulator() + ", takes_field " + a.takesField() + ") differs from the"
                + " Python class (accumulator " + accumulator + ", takes_field " + takesField + ")");
        }
        a.configure(params);
        return a;
    }
}
