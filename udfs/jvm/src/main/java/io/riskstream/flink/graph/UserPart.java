package io.riskstream.flink.graph;

/**
 * The user stage's part (udfs.graph.UserPart): starts the record's graph context with the user's newest
 * known-fraud time from the user key's graph label store ({@link GraphLabels}; {@code noFraud} without
 * labels). Pitfall: it keeps no graph state of its own; the label store is the only input.
 */
public final class UserPart {
    final GraphSpec g;

    public UserPart(GraphSpec g) {
        this.g = g;
    }

    /** The context of an event of {@code user} entering the graph stages. */
    public GraphContext step(GraphLabels lab, String user) {
        return new GraphContext(g.members.length, GraphLabels.fraudOf(lab, user, g.noFraud));
    }
}
