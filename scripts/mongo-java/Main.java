// Launcher for mongo-java-server (de.bwaldvogel:mongo-java-server), which ships no main class:
// binds the MongoDB wire protocol to HOST:PORT and serves until the process is killed. Compiled
// once into the cached home by scripts/infra.sh, which runs it with the Maven-fetched jars.
//
//   java -cp 'classes:libs/*' Main HOST PORT [H2_FILE [--commit-each-command]]
//
// With H2_FILE the data lives in that H2 MVStore file (kept across restarts); without it, in memory.
// H2 writes the file in the background about once a second, so a killed server loses the writes
// of its last second, acknowledged or not. --commit-each-command writes them to the file (the OS's
// page cache) before each reply: what a client saw acknowledged survives a SIGKILL of the server
// (not a power cut: nothing is fsynced), as a crash test of a processed-store needs.
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.ServerVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import io.netty.channel.Channel;

public final class Main {
  public static void main(String[] args) throws InterruptedException {
    boolean commitEach = args.length == 4 && args[3].equals("--commit-each-command");
    if (args.length < 2 || args.length > 4 || (args.length == 4 && !commitEach)) {
      System.err.println("usage: Main HOST PORT [H2_FILE [--commit-each-command]]");
      System.exit(2);
    }
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    H2Backend backend =
        args.length == 2 ? H2Backend.inMemory()
            : commitEach ? new CommittingH2Backend(args[2])
            : new H2Backend(args[2]);
    // Report MongoDB 5.0 (wire version 13): current drivers refuse servers older than 4.0.
    backend.version(ServerVersion.MONGO_5_0);
    MongoServer server = new MongoServer(backend);
    server.bind(host, port);
    // SIGTERM/SIGINT: close the clients and the listener, then the backend (flushes the H2 file).
    Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow, "shutdown"));
    System.out.println(
        "mongo-java-server listening on " + host + ":" + port + " (" + backend
            + (commitEach ? ", committed before each reply" : "") + ")");
    Thread.currentThread().join();
  }

  /** Commits the MVStore after every command, before its reply is sent. */
  static final class CommittingH2Backend extends H2Backend {
    CommittingH2Backend(String file) {
      super(file);
    }

    @Override
    public Document handleCommand(Channel channel, String database, String command, Document query) {
      try {
        return super.handleCommand(channel, database, command, query);
      } finally {
        commit();
      }
    }

    @Override
    public Document handleMessage(MongoMessage message) {
      try {
        return super.handleMessage(message);
      } finally {
        commit();
      }
    }
  }
}
