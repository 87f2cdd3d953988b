// A WCF echo service and client over NetTcpBinding (security None), for
// tests/protocols/test_wcf_mono.py. Compiled in the test with Mono's mcs.
//
//   mono EchoWcf.exe serve|serve-strict ADDRESS buffered|streamed NAME
//   mono EchoWcf.exe call VIA buffered|streamed ADDRESS
//
// "serve-strict" refuses a call whose preamble Via does not name this
// service's own host and port, as .NET's net.tcp listener does (Mono reads
// the Via and ignores it). The client connects to VIA and addresses ADDRESS
// (the service's own address, its SOAP To header), as ClientViaBehavior does.
using System;
using System.Collections.Generic;
using System.Reflection;
using System.ServiceModel;

[ServiceContract]
public interface IEcho
{
    [OperationContract]
    string Echo(string text);
}

public class EchoService : IEcho
{
    public static string Name = "";
    public static Uri Address;
    public static bool Strict;

    public string Echo(string text)
    {
        Uri via = ReceivedVia();
        if (Strict && (via == null || via.Authority != Address.Authority))
        {
            Console.WriteLine("refused via " + via);
            Console.Out.Flush();
            throw new FaultException("EndpointNotFound: via " + via + " is not " + Address);
        }
        return Name + ":" + text + " via " + via;
    }

    // Mono keeps the preamble's Via in its frame reader only: find that reader
    // behind the operation context (a bounded walk over fields) and read it.
    static Uri ReceivedVia()
    {
        const BindingFlags Fields = BindingFlags.Instance | BindingFlags.Public
            | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;
        var seen = new HashSet<object>();
        var queue = new Queue<KeyValuePair<object, int>>();
        queue.Enqueue(new KeyValuePair<object, int>(OperationContext.Current, 0));
        while (queue.Count > 0)
        {
            var item = queue.Dequeue();
            object value = item.Key;
            if (value == null || item.Value > 6 || !seen.Add(value))
                continue;
            Type type = value.GetType();
            if (type.Name == "TcpBinaryFrameManager")
            {
                var property = type.GetProperty("Via", Fields & ~BindingFlags.DeclaredOnly);
                return (Uri) property.GetValue(value, null);
            }
            if (type.IsPrimitive || type.IsArray || value is string)
                continue;
            for (Type t = type; t != null; t = t.BaseType)
                foreach (var field in t.GetFields(Fields))
                    if (!field.FieldType.IsValueType)
                        queue.Enqueue(new KeyValuePair<object, int>(field.GetValue(value), item.Value + 1));
        }
        return null;
    }
}

public static class Program
{
    static NetTcpBinding Binding(string mode)
    {
        var binding = new NetTcpBinding(SecurityMode.None);
        binding.TransferMode = mode == "streamed" ? TransferMode.Streamed : TransferMode.Buffered;
        binding.OpenTimeout = binding.SendTimeout = binding.ReceiveTimeout = TimeSpan.FromSeconds(10);
        return binding;
    }

    public static int Main(string[] args)
    {
        string role = args[0], address = args[1], mode = args[2];
        if (role == "serve" || role == "serve-strict")
        {
            EchoService.Name = args[3];
            EchoService.Address = new Uri(address);
            EchoService.Strict = role == "serve-strict";
            var host = new ServiceHost(typeof(EchoService));
            host.AddServiceEndpoint(typeof(IEcho), Binding(mode), EchoService.Address);
            host.Open();
            Console.WriteLine("listening " + address);
            Console.Out.Flush();
            Console.In.ReadLine();  // until the test closes stdin
            host.Close();
            return 0;
        }
        var to = new EndpointAddress(args[3]);
        var factory = new ChannelFactory<IEcho>(Binding(mode), to);
        var channel = factory.CreateChannel(to, new Uri(address));
        try
        {
            Console.WriteLine("reply " + channel.Echo("hello"));
            ((IClientChannel) channel).Close();
            return 0;
        }
        catch (Exception e)
        {
            Console.WriteLine("error " + e.GetType().FullName + ": " + e.Message);
            return 1;
        }
    }
}
